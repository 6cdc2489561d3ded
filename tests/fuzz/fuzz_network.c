/* libFuzzer target: the network-file parser, moe_network_parse (include/moesim/projection.h).
 * Input: the bytes of a network file. On success every class has a latency >= 0 (seconds, finite)
 * and a bandwidth > 0 (bytes per second; +inf when a file gives more than ~1.8e299 GB/s), the name
 * is a non-empty string, and the alpha-beta time of a small two-rank exchange over that network is
 * a finite, non-negative number; on failure MOE_EUSAGE (or MOE_ENOMEM) and a message that names the
 * file. Seeds: tests/fuzz/corpus/network (the network files of launch/, and near misses). */
#include "moesim/error.h"
#include "moesim/projection.h"
#include "moesim/topology.h"

#include "fuzz.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define FILE_NAME "fuzz.network"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moe_network net;
    char msg[512];
    memset(msg, 'x', sizeof msg);
    int rc = moe_network_parse((const char *)data, size, FILE_NAME, &net, msg, sizeof msg);
    if (rc != MOE_OK) {
        FUZZ_ASSERT(rc == MOE_EUSAGE || rc == MOE_ENOMEM, "rc %d (%s)", rc, moe_strerror(rc));
        FUZZ_ASSERT_MESSAGE(msg, sizeof msg);
        FUZZ_ASSERT(strstr(msg, FILE_NAME) != NULL, "message does not name the file: %s", msg);
        return 0;
    }
    FUZZ_ASSERT(memchr(net.name, '\0', sizeof net.name) != NULL && net.name[0] != '\0',
                "name not a non-empty string");
    for (int c = 0; c < MOE_LOC_COUNT; c++) {
        FUZZ_ASSERT(isfinite(net.latency[c]) && net.latency[c] >= 0, "%s latency %g",
                    moe_locality_name(c), net.latency[c]);
        FUZZ_ASSERT(net.bandwidth[c] > 0, "%s bandwidth %g", moe_locality_name(c),
                    net.bandwidth[c]);
    }
    /* Two ranks on two nodes, each sending 1000 bytes to the other and 500 to itself: one
     * other_node and one same_rank message per rank and direction. */
    moe_placement placement[2];
    memset(placement, 0, sizeof placement);
    for (int r = 0; r < 2; r++) {
        placement[r].rank = r;
        placement[r].node = r;
        placement[r].package = placement[r].numa = placement[r].core_first = -1;
    }
    const int64_t bytes[4] = {500, 1000, 1000, 500};
    double t = moe_project_stage(bytes, placement, 2, &net);
    FUZZ_ASSERT(isfinite(t) && t >= 0, "stage time %g", t);
    return 0;
}
