/* test.h - a tiny test harness: CHECK counts, failures print where and why, and
 * TEST_END prints the closing "N passed, N failed" line that tests/run.sh adds up. */
#ifndef LDM_TEST_H
#define LDM_TEST_H
#include <math.h>
#include <stdio.h>

static int test_passed, test_failed;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            test_passed++;                                                      \
        } else {                                                                \
            test_failed++;                                                      \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);              \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
        }                                                                       \
    } while (0)

/* Relative L2 error ||a-b|| / ||b||, with b the reference. */
static inline double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#define TEST_END()                                                              \
    do {                                                                        \
        printf("%d passed, %d failed\n", test_passed, test_failed);            \
        return test_failed ? 1 : 0;                                             \
    } while (0)

#endif
