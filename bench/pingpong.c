/* pingpong: the alpha-beta parameters of this machine, to write a --network file from measurement.
 * Rank 0 and rank 1 exchange messages of growing size; latency = half the round trip of a 1-byte
 * message, bandwidth = bytes / half the round trip of the largest. memcpy bandwidth stands for the
 * same_rank class. Run: mpirun -n 2 [--bind-to core] build/bench/pingpong */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
        if (rank == 0)
            fprintf(stderr, "pingpong: needs exactly 2 ranks (mpirun -n 2)\n");
        MPI_Finalize();
        return 2;
    }
    const size_t largest = (size_t)64 << 20;
    char *buf = malloc(largest), *copy = malloc(largest);
    if (buf == NULL || copy == NULL)
        MPI_Abort(MPI_COMM_WORLD, 1);
    memset(buf, 1, largest);
    memset(copy, 2, largest);
    enum { REPS = 21 };
    double t[REPS];
    if (rank == 0)
        printf("# pingpong between 2 ranks; each figure the median of %d round trips\n"
               "# %12s %14s %12s\n", REPS, "bytes", "half RTT us", "GB/s");
    for (size_t bytes = 1; bytes <= largest; bytes *= 16) {
        for (int r = 0; r < REPS; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            if (rank == 0) {
                MPI_Send(buf, (int)bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
                MPI_Recv(buf, (int)bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(buf, (int)bytes, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, (int)bytes, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
            }
            t[r] = (MPI_Wtime() - t0) / 2;
        }
        double half = median(t, REPS);
        if (rank == 0)
            printf("  %12zu %14.2f %12.2f\n", bytes, half * 1e6, (double)bytes / half / 1e9);
    }
    if (rank == 0) {
        for (int r = 0; r < REPS; r++) {
            double t0 = MPI_Wtime();
            memcpy(copy, buf, largest);
            t[r] = MPI_Wtime() - t0;
        }
        double m = median(t, REPS);
        printf("# memcpy of %zu bytes: %.2f GB/s (checksum %d)\n", largest, (double)largest / m / 1e9,
               copy[largest - 1]);
    }
    free(buf);
    free(copy);
    MPI_Finalize();
    return 0;
}
