#include "stats.h"

#include "numeric.h"

static void sort_doubles(double *v, size_t n) {
    for (size_t i = 1; i < n; i++) { /* insertion sort: inputs are small columns */
        double x = v[i];
        size_t j = i;
        while (j > 0 && v[j - 1] > x) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
}

summary summarize(double *values, size_t n) {
    summary s = {0};
    s.count = n;
    if (n == 0)
        return s;
    sort_doubles(values, n);
    s.min = values[0];
    s.max = values[n - 1];
    for (size_t i = 0; i < n; i++)
        s.sum += values[i];
    s.mean = s.sum / (double)n;
    s.median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
    double squares = 0;
    for (size_t i = 0; i < n; i++)
        squares += (values[i] - s.mean) * (values[i] - s.mean);
    s.stddev = square_root(squares / (double)n);
    return s;
}
