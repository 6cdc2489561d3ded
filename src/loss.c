#include "moesim/loss.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void moe_logsumexp_rows(double *lse, const float *z, int64_t n, int E)
{
    for (int64_t t = 0; t < n; t++) {
        const float *zr = z + t * E;
        float zmax = zr[0];
        for (int e = 1; e < E; e++)
            zmax = zr[e] > zmax ? zr[e] : zmax;
        double sum = 0.0;
        for (int e = 0; e < E; e++)
            sum += exp((double)zr[e] - (double)zmax);
        lse[t] = (double)zmax + log(sum);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double moe_gini(const double *x, int n)
{
    double *s = malloc((size_t)n * sizeof *s);
    if (s == NULL)
        return moe_gini_ref(x, n);
    memcpy(s, x, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    /* sum_i sum_j |x_i - x_j| = 2 sum_i (2i - n + 1) s_i for ascending s, i from 0 */
    double weighted = 0.0, total = 0.0;
    for (int i = 0; i < n; i++) {
        weighted += (2.0 * i - n + 1.0) * s[i];
        total += s[i];
    }
    free(s);
    return total > 0.0 ? weighted / ((double)n * total) : 0.0;
}

double moe_gini_ref(const double *x, int n)
{
    double diff = 0.0, total = 0.0;
    for (int i = 0; i < n; i++) {
        total += x[i];
        for (int j = 0; j < n; j++)
            diff += fabs(x[i] - x[j]);
    }
    double mean = total / n;
    /* mean absolute difference diff / n^2, over twice the mean */
    return mean > 0.0 ? diff / ((double)n * n) / (2.0 * mean) : 0.0;
}

double moe_cv2(const double *x, int n)
{
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    return mean != 0.0 ? var / (mean * mean) : 0.0;
}

double moe_max_over_mean(const double *x, int n)
{
    double mean = 0.0, max = 0.0;
    for (int i = 0; i < n; i++) {
        mean += x[i];
        max = i == 0 || x[i] > max ? x[i] : max;
    }
    mean /= n;
    return mean > 0.0 ? max / mean : 0.0;
}

void moe_balance_from_counts(moe_balance *b, const int64_t *routed, int E)
{
    double *x = malloc((size_t)E * sizeof *x);
    b->entropy = b->gini = b->max_over_mean = 0.0;
    b->tpe_min = b->tpe_max = b->tpe_mean = b->tpe_std = 0.0;
    if (x == NULL || E <= 0) {
        free(x);
        return;
    }
    double total = 0.0;
    for (int e = 0; e < E; e++) {
        x[e] = (double)routed[e];
        total += x[e];
    }
    b->tpe_min = b->tpe_max = x[0];
    for (int e = 0; e < E; e++) {
        b->tpe_min = x[e] < b->tpe_min ? x[e] : b->tpe_min;
        b->tpe_max = x[e] > b->tpe_max ? x[e] : b->tpe_max;
        if (x[e] > 0.0 && total > 0.0) {
            double share = x[e] / total;
            b->entropy -= share * log(share); /* nats; 0 ln 0 = 0 */
        }
    }
    b->tpe_mean = total / E;
    b->tpe_std = sqrt(moe_cv2(x, E)) * b->tpe_mean;
    b->gini = moe_gini(x, E);
    b->max_over_mean = moe_max_over_mean(x, E);
    free(x);
}
