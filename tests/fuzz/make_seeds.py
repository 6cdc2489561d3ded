"""Write the seed corpora of the fuzz targets, tests/fuzz/corpus/{npy,config,network}/, and the
option dictionary of the config target, tests/fuzz/dict/config.dict (from src/config.c's table).

    /usr/bin/python3 tests/fuzz/make_seeds.py        (needs numpy for the .npy seeds)

The seeds are committed; this script is how they were made and how to remake them after a format or
an option changes (the other two dictionaries are written by hand). Each corpus holds valid inputs
and near misses (each refused for one reason), so the fuzzer starts from every branch of the
parser rather than from random bytes. Writes only into the corpus and dict directories, replacing
files of the same names.
"""

import io
import os
import re
import sys

import numpy as np
from numpy.lib import format as npy_format

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def npy(arr, version, keep_data=True):
    """numpy's own bytes for arr in format `version`; without the data section if not keep_data."""
    buf = io.BytesIO()
    npy_format.write_array(buf, arr, version=version, allow_pickle=False)
    raw = buf.getvalue()
    if not keep_data:
        prefix = 10 if version == (1, 0) else 12
        hlen = int.from_bytes(raw[8:prefix], "little")
        raw = raw[:prefix + hlen]
    return raw


def hand_npy(version, dict_text, pad=True):
    """A header whose dictionary is dict_text, padded with spaces and a newline as numpy pads (total
    a multiple of 64) unless pad is False."""
    prefix = 10 if version == 1 else 12
    body = dict_text.encode("latin1")
    if pad:
        total = prefix + len(body) + 1
        body += b" " * ((64 - total % 64) % 64) + b"\n"
    hlen = len(body).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + hlen + body


def npy_seeds():
    rng = np.random.default_rng(0)
    good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }"
    return {
        "v1_f32_3x4.npy": npy(rng.standard_normal((3, 4)).astype("<f4"), (1, 0)),
        "v1_f64_2x5.npy": npy(rng.standard_normal((2, 5)).astype("<f8"), (1, 0)),
        "v2_f32_1x1.npy": npy(np.ones((1, 1), "<f4"), (2, 0)),
        "v3_f32_4x2.npy": npy(np.arange(8, dtype="<f4").reshape(4, 2), (3, 0)),
        "v1_header_only_1000x512.npy": npy(np.zeros((1000, 512), "<f4"), (1, 0), keep_data=False),
        "v1_double_quotes.npy": hand_npy(
            1, '{"descr": "<f4", "fortran_order": False, "shape": (2, 3), }'),
        "v1_no_padding.npy": hand_npy(
            1, "{'descr':'<f8','fortran_order':False,'shape':(7,1)}", pad=False),
        # near misses, each refused for one reason
        "bad_fortran_order.npy": npy(np.asfortranarray(np.ones((2, 3), "<f4")), (1, 0)),
        "bad_dtype_i4.npy": npy(np.ones((2, 2), "<i4"), (1, 0)),
        "bad_big_endian.npy": npy(np.ones((2, 2), ">f4"), (1, 0)),
        "bad_3d.npy": npy(np.ones((2, 1, 2), "<f4"), (1, 0)),
        "bad_1d.npy": npy(np.ones((5,), "<f4"), (1, 0)),
        "bad_empty_shape.npy": hand_npy(1, good.replace("(2, 2)", "(0, 3)")),
        "bad_scalar.npy": hand_npy(1, good.replace("(2, 2)", "()")),
        "bad_huge.npy": hand_npy(1, good.replace("(2, 2)", "(1099511627777, 2)")),
        "bad_overflow.npy": hand_npy(1, good.replace("(2, 2)", "(99999999999999999999999, 1)")),
        "bad_structured.npy": hand_npy(1, good.replace("'<f4'", "[('a', '<f4')]")),
        "bad_version4.npy": b"\x93NUMPY\x04\x00" + hand_npy(1, good)[8:],
        "bad_truncated.npy": npy(np.ones((2, 2), "<f4"), (1, 0))[:40],
        "bad_hlen_too_big.npy": b"\x93NUMPY\x02\x00\xff\xff\xff\x00{}",
        "bad_magic.npy": b"\x93NUMPZ\x01\x00\x10\x00{}" + b" " * 14,
        "bad_nul_in_header.npy": hand_npy(1, good.replace(",", ",\0", 1)),
        "bad_missing_key.npy": hand_npy(1, "{'descr': '<f4', 'shape': (2, 2), }"),
    }


def config_seeds():
    """Command lines: byte 0 is the rank count (1 + (byte & 63): '@' 1, 'A' 2, 'C' 4), then one
    argument a line (tests/fuzz/fuzz_config.c)."""
    lines = {
        "default_R2": ["A"],
        "readme_R4": ["C", "--tokens", "8192", "--hidden", "512", "--experts", "8", "--top-k", "2",
                      "--capacity-factor", "1.25"],
        "ablation_R2": ["A", "--capacity-factor", "1.0,1.25,1.5,2.0", "--predict-only"],
        "equals_form_R3": ["B", "--tokens=1001", "--experts=6", "--top-k=1", "--seed=7",
                           "--capacity-scope=local"],
        "dropless_R1": ["@", "--capacity-factor", "0", "--renormalize", "--ffn", "64", "--quiet"],
        "files_R3": ["B", "--tokens-file", "h.npy", "--router-file", "W.npy", "--json", "out.json",
                     "--dump-routing", "r.csv", "--dump-output", "y.npy"],
        "replay_R2": ["A", "--logits-file", "z.npy", "--dump-routing", "z2.npy"],
        "workload_R4": ["C", "--skew", "1.5", "--hot-experts", "2", "--hot-share", "0.6",
                        "--clusters", "16", "--iters", "10", "--warmup", "0"],
        "topology_R4": ["C", "--a2a", "hierarchical", "--ranks-per-node", "2", "--network",
                        "launch/laptop.network", "--topology", "package:2 numa:2 core:4 pu:1"],
        "pad_R2": ["A", "--pad-to-capacity", "--drop-policy", "position", "--experts", "16"],
        "memory_R2": ["A", "--max-memory", "2G"],
        "memory_percent_R1": ["@", "--max-memory", "50%"],
        "help": ["@", "--help"],
        "version": ["@", "--version"],
        "deepseek_R64": ["?", "--tokens", "65536", "--hidden", "7168", "--ffn", "2048", "--experts",
                         "256", "--top-k", "8", "--capacity-factor", "1.0"],
        # issue 9: policies, routing, groups, shared experts, noise, presets, Megatron-Core names
        "policies_R2": ["A", "--drop-policy", "reroute", "--capacity-factor", "1.0,1.25"],
        "expert_choice_R2": ["A", "--routing", "expert-choice", "--capacity-factor", "2",
                             "--pad-to-capacity", "--drop-policy", "position"],
        "groups_R4": ["C", "--experts", "16", "--top-k", "4", "--expert-groups", "4",
                      "--group-top-k", "2", "--score", "sigmoid", "--topk-scale", "2.5"],
        "group_by_node_R4": ["C", "--group-top-k", "1", "--ranks-per-node", "2"],
        "shared_noise_R2": ["A", "--shared-experts", "2", "--shared-ffn", "96", "--noisy-top-k",
                            "--input-jitter", "0.01"],
        "preset_v3_scaled_R8": ["G", "--hidden", "256", "--preset", "deepseek-v3", "--tokens", "512",
                                "--predict-only"],
        "preset_mixtral_R2": ["A", "--preset=mixtral", "--capacity-factor", "1.25"],
        "megatron_R2": ["A", "--num-experts", "16", "--moe-router-topk", "4",
                        "--moe-expert-capacity-factor", "1.5", "--moe-token-drop-policy", "probs",
                        "--moe-router-score-function", "sigmoid", "--moe-router-num-groups", "4",
                        "--moe-router-group-topk", "2", "--moe-router-topk-scaling-factor", "2.5",
                        "--moe-shared-expert-intermediate-size", "256", "--shared-experts", "2",
                        "--moe-pad-expert-input-to-capacity", "--moe-input-jitter-eps", "0.01"],
        # refused, each for one reason
        "bad_single_dash": ["@", "-tokens", "5"],
        "bad_abbreviation": ["@", "--expert", "4"],
        "bad_missing_value": ["@", "--tokens"],
        "bad_number": ["@", "--hidden", "12x"],
        "bad_flag_value": ["@", "--renormalize=yes"],
        "bad_extra_argument": ["@", "--quiet", "extra"],
        "bad_k_over_E": ["@", "--experts", "2", "--top-k", "3"],
        "bad_R_over_E": ["H", "--experts", "8"],
        "bad_cf_list": ["@", "--capacity-factor", "1.0,,2.0"],
        "bad_pad_dropless": ["@", "--pad-to-capacity", "--capacity-factor", "0"],
        "bad_hot_share_alone": ["@", "--hot-share", "0.5"],
        "bad_clusters_with_file": ["@", "--clusters", "4", "--tokens-file", "h.npy"],
        "bad_too_many_rows": ["@", "--tokens", "1099511627776", "--top-k", "8", "--experts", "8"],
        "bad_groups_alone": ["@", "--expert-groups", "4"],
        "bad_groups_divide": ["@", "--experts", "12", "--expert-groups", "8", "--group-top-k", "2"],
        "bad_group_capacity": ["@", "--experts", "16", "--top-k", "9", "--expert-groups", "4",
                               "--group-top-k", "2"],
        "bad_expert_choice_dropless": ["@", "--routing", "expert-choice", "--capacity-factor",
                                       "1,0"],
        "bad_expert_choice_policy": ["@", "--routing", "expert-choice", "--drop-policy", "probs"],
        "bad_expert_choice_rows": ["@", "--routing", "expert-choice", "--tokens", "268435456",
                                   "--experts", "16", "--top-k", "1"],
        "bad_shared_ffn_alone": ["@", "--shared-ffn", "64"],
        "bad_jitter_replay": ["@", "--input-jitter", "0.1", "--logits-file", "z.npy"],
        "bad_preset": ["@", "--preset", "gpt-4"],
        "bad_preset_scaled_width": ["@", "--preset", "mixtral", "--hidden", "16777216"],
        "bad_shared_total": ["@", "--moe-shared-expert-intermediate-size", "100",
                             "--shared-experts", "3"],
        "bad_alias_value": ["@", "--moe-router-topk", "0"],
    }
    return {name: ("\n".join(args) + "\n").encode() for name, args in lines.items()}


def network_seeds():
    seeds = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "launch"))):
        if name.endswith(".network"):
            with open(os.path.join(ROOT, "launch", name), "rb") as f:
                seeds[name] = f.read()
    classes = [("same_rank", "0.5", "10"), ("same_numa", "1", "8"), ("same_package", "2", "4"),
               ("same_node", "4", "2"), ("other_node", "10", "1")]
    body = "".join("%s.latency_us = %s\n%s.bandwidth_GBps = %s\n" % (c, lat, c, bw)
                   for c, lat, bw in classes)
    seeds.update({
        "minimal.network": body.encode(),
        "messy.network": ("  # comment\n\n\tname =  spaced  name \r\n" + body.replace(" = ", "=")
                          + "same_rank.latency_us = 1e-3 # trailing comment\n").encode(),
        "no_final_newline.network": ("name = x\n" + body).rstrip("\n").encode(),
        "bad_missing_class.network": body.split("other_node")[0].encode(),
        "bad_unknown_key.network": ("name = x\nsame_rack.latency_us = 1\n" + body).encode(),
        "bad_no_equals.network": ("name = x\nsame_rank.latency_us 0.5\n" + body).encode(),
        "bad_number.network": (body + "same_numa.bandwidth_GBps = 4.0GB\n").encode(),
        "bad_zero_bandwidth.network": (body + "other_node.bandwidth_GBps = 0\n").encode(),
        "bad_negative_latency.network": (body + "same_numa.latency_us = -1\n").encode(),
        "bad_nan.network": (body + "same_numa.latency_us = nan\n").encode(),
        "bad_nul_byte.network": ("name = x\0 hidden\n" + body + "same_rank\0.latency_us = 1\n")
                                .encode(),
    })
    return seeds


def config_dict():
    """libFuzzer dictionary: every long option of src/config.c, bare and with '=', and the words
    and number forms their values take."""
    with open(os.path.join(ROOT, "src", "config.c")) as f:
        names = sorted(set(re.findall(r'\{"([a-z0-9-]+)", (?:required|no)_argument', f.read())))
    words = ["global", "local", "position", "probs", "choice", "random", "reroute", "token-choice",
             "expert-choice", "softmax", "sigmoid", "switch", "gshard", "mixtral", "deepseek-moe",
             "deepseek-v3", "qwen3-moe", "flat", "hierarchical", ".npy", ".csv", ".xml", "-",
             "--", "1.0,1.25", "%", "K", "M", "G", "T", "KiB", "MiB", "GiB", "TiB", "1e6", "nan",
             "inf", "0x10", "-1", "9223372036854775807", "1099511627776", "65536", "16777216",
             "package:2 numa:2 core:4 pu:1"]
    lines = ["# fuzz_config's dictionary, written by make_seeds.py from src/config.c's options"]
    lines += ['"--%s"\n"--%s="' % (n, n) for n in names]
    lines += ['"%s"' % w for w in words]
    path = os.path.join(HERE, "dict", "config.dict")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("config.dict: %d options" % len(names))


def write(kind, seeds):
    directory = os.path.join(HERE, "corpus", kind)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    print("%s: %d seeds, %d bytes" % (kind, len(seeds), sum(len(d) for d in seeds.values())))


def main():
    write("npy", npy_seeds())
    write("config", config_seeds())
    write("network", network_seeds())
    config_dict()
    return 0


if __name__ == "__main__":
    sys.exit(main())
