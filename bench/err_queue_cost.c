/*
 * What emptying OpenSSL's error queue costs (kongacme/tls/_openssl.c's
 * clear_errors): ERR_clear_error, which OpenSSL 3.0 does by walking all
 * sixteen slots of the thread's queue, against ERR_peek_error, which only
 * looks. Both on an empty queue, as before almost every call kongacme makes.
 *
 *     gcc -O2 bench/err_queue_cost.c -o /tmp/err_queue_cost -lssl -lcrypto && /tmp/err_queue_cost
 */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <time.h>

static double
now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int
main(void)
{
    OPENSSL_init_ssl(0, NULL);
    const int n = 10000000;
    unsigned long seen = 0;
    for (int round = 0; round < 3; round++) {
        double t0 = now();
        for (int i = 0; i < n; i++)
            ERR_clear_error();
        double t1 = now();
        for (int i = 0; i < n; i++)
            seen += ERR_peek_error();
        double t2 = now();
        printf("%s: ERR_clear_error %.1f ns, ERR_peek_error %.1f ns (%lu)\n", OpenSSL_version(OPENSSL_VERSION),
               (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9, seen);
    }
    return 0;
}
