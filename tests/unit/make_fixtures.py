#!/usr/bin/python3
"""Fixtures of the unit tests, written at build time into the directory given as argv[1].

aux_W.npy (8, 16) and aux_h.npy (2000, 16), float64: the Switch load-balancing worked check of
/work/shared/REFERENCES.md. numpy default_rng(0); W (E x d) is drawn first, then h (T x d), both
standard normal. With z = h W^T, p = softmax(z), top-1 by argmax, aux = E * sum_i f_i P_i =
1.0856199045902326 (numpy 1.24, float64), routed counts [192 145 255 311 384 202 331 180].
test_aux_loss.c checks moesim's router and stats against these figures.
"""
import os
import sys

import numpy as np

E, D, T = 8, 16, 2000


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((E, D))
    h = rng.standard_normal((T, D))
    np.save(os.path.join(out, "aux_W.npy"), w)
    np.save(os.path.join(out, "aux_h.npy"), h)


if __name__ == "__main__":
    main()
