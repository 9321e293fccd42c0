/*
 * The C side of kongacme.tls._openssl that kongacme.engine._steady calls
 * (through the capsule below, so that _steady.c needs neither OpenSSL's
 * headers nor its library): a session's record in, plaintext out, and
 * plaintext in, records out, with no Python object made for either.
 */
#ifndef KONGACME_OPENSSL_H
#define KONGACME_OPENSSL_H

#include <Python.h>

#define KONGACME_OPENSSL_CAPSULE "kongacme.tls._openssl._C_API"
#define KONGACME_OPENSSL_API_VERSION 3

/* What open_record gives besides a length of plaintext (> 0). With no
   ciphertext (`size` 0) it reads what OpenSSL has already. */
#define KONGACME_NO_DATA 0  /* a record with no application data (a KeyUpdate) */
#define KONGACME_ENDED (-1) /* the client's close_notify (or FIN) */
#define KONGACME_FAILED (-2) /* a Python exception is set (ssl.SSLError for TLS) */

typedef struct {
    int version; /* KONGACME_OPENSSL_API_VERSION */
    /* kongacme.tls._openssl.Session: the functions take only this type. */
    PyTypeObject *session_type;
    /* `size` bytes of ciphertext in, the plaintext OpenSSL gives of them out
       into `plain` (`room` bytes): its length, or one of the codes above. */
    Py_ssize_t (*open_record)(PyObject *session, const char *ciphertext, Py_ssize_t size, char *plain,
                              Py_ssize_t room);
    /* `size` bytes of plaintext in (all of them), the records out: their
       length, with *records pointing at them until the next call into this
       module; -1 with a Python exception set. */
    Py_ssize_t (*seal)(PyObject *session, const char *plain, Py_ssize_t size, const char **records);
    /* Our close_notify written, and all the records OpenSSL has (it
       included): their length, with *records as seal's; -1 with a Python
       exception set. */
    Py_ssize_t (*close_notify)(PyObject *session, const char **records);
    /* `size` bytes of ciphertext in, and the handshake taken as far as they
       go: 1 done, 0 more is needed (what OpenSSL wrote is to take), -1 with
       a Python exception set (ssl.SSLError for TLS: its alert is to take). */
    int (*handshake)(PyObject *session, const char *ciphertext, Py_ssize_t size);
    /* All the records OpenSSL has written: as seal's, with no plaintext in. */
    Py_ssize_t (*take)(PyObject *session, const char **records);
    /* 1 when the session's protocol is TLS 1.3, else 0. */
    int (*is_tls13)(PyObject *session);
} KongacmeOpenSSL_API;

#endif
