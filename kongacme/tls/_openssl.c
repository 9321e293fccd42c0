/*
 * kongacme.tls._openssl: kongacme's own binding of OpenSSL's server side
 * over memory BIOs, the third beside pyOpenSSL and the standard library's
 * ssl (kongacme.tls.session), for busy certificates (kongacme.tls.stdlib).
 *
 * Why: per kept-alive request the relay makes four TLS calls. Through the
 * standard library each is a Python frame (ssl.SSLObject's wrappers), a C
 * method, a GIL hand-off and a new bytes object; here the compiled steady
 * state (kongacme.engine._steady) calls OpenSSL directly through the
 * capsule of _openssl.h, and the Python methods below are single C calls
 * for the rest of the relay (bench/RESULTS.md, session 21).
 *
 * What it binds, and nothing more: a server context from a PEM chain and
 * key with kongacme's profile (the same as the pyOpenSSL contexts':
 * kongacme.tls.context.ContextBuilder.build), and a session on it. Only
 * OpenSSL's public API is used (the system's libssl, the one the standard
 * library's ssl is linked with). The GIL is never released: a session is
 * used only on the reactor's thread, and OpenSSL's calls here never block
 * (memory BIOs).
 *
 * The Python methods behave as the standard library's session
 * (kongacme.tls.session.StdSession) and raise its exceptions
 * (ssl.SSLWantReadError, ssl.SSLError with `reason` and `library`), so the
 * relay and the TLS pump treat both alike.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <limits.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#ifndef OPENSSL_NO_DEPRECATED_3_0
#include <openssl/ec.h>
#include <openssl/rsa.h>
#endif

#include "_openssl.h"

/* The standard library's exception classes (from `ssl`, at import). */
static PyObject *SSLError, *SSLWantReadError, *SSLZeroReturnError, *SSLEOFError;

/* -- errors ------------------------------------------------------------- */

/*
 * Empty OpenSSL's error queue (of this thread) when anything is in it:
 * SSL_get_error reads a failed call right only with nothing older queued.
 * Every failure here leaves it empty, so it almost always is, and looking
 * costs ~16 ns where ERR_clear_error costs ~125 (OpenSSL 3.0: it walks all
 * sixteen slots), twice per kept-alive request (bench/RESULTS.md, session 21).
 */
static inline void
clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/*
 * Raise `type(code, message)` with the attributes the standard library's
 * ssl errors always have: `reason` and `library` (None when unknown).
 */
static void
raise_ssl(PyObject *type, int code, PyObject *message, const char *reason, const char *library)
{
    PyObject *error = PyObject_CallFunction(type, "iO", code, message);
    if (error == NULL)
        return;
    PyObject *r = reason != NULL ? PyUnicode_FromString(reason) : Py_NewRef(Py_None);
    PyObject *l = library != NULL ? PyUnicode_FromString(library) : Py_NewRef(Py_None);
    if (r != NULL && l != NULL && PyObject_SetAttrString(error, "reason", r) == 0 &&
        PyObject_SetAttrString(error, "library", l) == 0)
        PyErr_SetObject(type, error);
    Py_XDECREF(r);
    Py_XDECREF(l);
    Py_DECREF(error);
}

/* raise_ssl with a C string for the message. */
static void
raise_text(PyObject *type, int code, const char *text)
{
    PyObject *message = PyUnicode_FromString(text);
    if (message != NULL) {
        raise_ssl(type, code, message, NULL, NULL);
        Py_DECREF(message);
    }
}

/*
 * An ssl.SSLError for OpenSSL's last queued error (its queue is then
 * emptied), worded as the standard library's: "[SSL: NO_SHARED_CIPHER] no
 * shared cipher", `reason` "NO_SHARED_CIPHER", `library` "SSL". `what`
 * says what failed when the queue is empty.
 */
static void
set_ssl_error(const char *what)
{
    unsigned long code = ERR_peek_last_error();
    ERR_clear_error();
    const char *reason_text = code ? ERR_reason_error_string(code) : NULL;
    const char *library_text = code ? ERR_lib_error_string(code) : NULL;
    char reason[128], library[64];
    size_t i;
    if (reason_text == NULL) {
        raise_text(SSLError, SSL_ERROR_SSL, what);
        return;
    }
    /* "no shared cipher" -> "NO_SHARED_CIPHER", as the standard library names them. */
    for (i = 0; reason_text[i] != '\0' && i < sizeof reason - 1; i++) {
        char c = reason_text[i];
        reason[i] = c == ' ' ? '_' : (c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c);
    }
    reason[i] = '\0';
    if (library_text == NULL || ERR_GET_LIB(code) == ERR_LIB_SSL)
        library_text = "SSL";
    for (i = 0; library_text[i] != '\0' && i < sizeof library - 1; i++)
        library[i] = library_text[i];
    library[i] = '\0';
    PyObject *message = PyUnicode_FromFormat("[%s: %s] %s (%s)", library, reason, reason_text, what);
    if (message == NULL)
        return;
    raise_ssl(SSLError, SSL_ERROR_SSL, message, reason, library);
    Py_DECREF(message);
}

/* The exception of a failed SSL_* call whose SSL_get_error is `kind`. */
static void
set_session_error(int kind, const char *what)
{
    switch (kind) {
    case SSL_ERROR_WANT_READ:
        clear_errors();
        raise_text(SSLWantReadError, SSL_ERROR_WANT_READ, "The operation did not complete (read)");
        return;
    case SSL_ERROR_ZERO_RETURN:
        clear_errors();
        raise_text(SSLZeroReturnError, SSL_ERROR_ZERO_RETURN, "TLS/SSL connection has been closed (EOF)");
        return;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_last_error() == 0) {
            /* The standard library's code for it (PY_SSL_ERROR_EOF). */
            raise_text(SSLEOFError, 8, "EOF occurred in violation of protocol");
            return;
        }
        /* fall through */
    default:
        set_ssl_error(what);
    }
}

/* -- Context -------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;
    /* The route's ALPN protocols, length-prefixed in the server's order. */
    unsigned char *alpn;
    unsigned int alpn_length;
    /* No leaf and key of its own: each session brings its Certificate. */
    int shared;
} Context;

/*
 * ALPN: the first of the route's protocols the client offers, or no ALPN
 * at all when they share none (no alert), as kongacme.tls.context's
 * _select_alpn does for pyOpenSSL (RFC 7301 §3.2 lets a server answer
 * either way).
 */
static int
select_alpn(SSL *Py_UNUSED(ssl), const unsigned char **out, unsigned char *outlen, const unsigned char *in,
            unsigned int inlen, void *arg)
{
    const Context *context = arg;
    for (unsigned int i = 0; i < context->alpn_length; i += 1u + context->alpn[i]) {
        unsigned int length = context->alpn[i];
        const unsigned char *wanted = context->alpn + i + 1;
        for (unsigned int j = 0; j < inlen;) {
            unsigned int offered = in[j];
            if (offered == 0 || j + 1 + offered > inlen)
                break; /* malformed (OpenSSL has checked it already) */
            if (offered == length && memcmp(in + j + 1, wanted, length) == 0) {
                *out = in + j + 1;
                *outlen = (unsigned char)offered;
                return SSL_TLSEXT_ERR_OK;
            }
            j += 1 + offered;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* An encrypted key is refused rather than asked for on a terminal. */
static int
no_password(char *Py_UNUSED(buf), int Py_UNUSED(size), int Py_UNUSED(rwflag), void *Py_UNUSED(u))
{
    return -1;
}

/*
 * The leaf, then every intermediate after it, from PEM: 0, or -1 with an
 * exception set. Without a leaf (`with_leaf` 0: a shared context) every
 * certificate is an intermediate, kept as the context's extra chain
 * certificates, which OpenSSL sends after a session's leaf that has no
 * chain of its own (ssl_add_cert_chain), as the pyOpenSSL contexts do.
 */
static int
load_chain(SSL_CTX *ctx, const char *pem, Py_ssize_t size, int with_leaf)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)size);
    if (bio == NULL) {
        set_ssl_error("reading the chain");
        return -1;
    }
    if (with_leaf) {
        X509 *leaf = PEM_read_bio_X509_AUX(bio, NULL, no_password, NULL);
        if (leaf == NULL || SSL_CTX_use_certificate(ctx, leaf) != 1) {
            X509_free(leaf);
            BIO_free(bio);
            set_ssl_error("the certificate");
            return -1;
        }
        X509_free(leaf);
    }
    X509 *extra;
    int found = 0;
    while ((extra = PEM_read_bio_X509(bio, NULL, no_password, NULL)) != NULL) {
        found++;
        /* Both take it on success. */
        long added = with_leaf ? SSL_CTX_add0_chain_cert(ctx, extra) : SSL_CTX_add_extra_chain_cert(ctx, extra);
        if (added != 1) {
            X509_free(extra);
            BIO_free(bio);
            set_ssl_error("an intermediate certificate");
            return -1;
        }
    }
    BIO_free(bio);
    /* The end of the PEM data is "no start line"; anything else is a fault,
       and so is a shared context's chain that holds bytes but no certificate. */
    unsigned long code = ERR_peek_last_error();
    if ((with_leaf || found > 0 || size == 0) &&
        (code == 0 || (ERR_GET_LIB(code) == ERR_LIB_PEM && ERR_GET_REASON(code) == PEM_R_NO_START_LINE))) {
        ERR_clear_error();
        return 0;
    }
    set_ssl_error("an intermediate certificate");
    return -1;
}

static int
load_key(SSL_CTX *ctx, const char *pem, Py_ssize_t size)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)size);
    if (bio == NULL) {
        set_ssl_error("reading the key");
        return -1;
    }
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
    BIO_free(bio);
    if (key == NULL) {
        set_ssl_error("the key");
        return -1;
    }
    int ok = SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    EVP_PKEY_free(key);
    if (!ok) {
        set_ssl_error("the key");
        return -1;
    }
    return 0;
}

/* `protocols` (a tuple of bytes) in ALPN's wire format: 0, or -1 with an exception set. */
static int
alpn_list(Context *self, PyObject *protocols)
{
    if (!PyTuple_Check(protocols)) {
        PyErr_SetString(PyExc_TypeError, "alpn must be a tuple of bytes");
        return -1;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(protocols), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *protocol = PyTuple_GET_ITEM(protocols, i);
        if (!PyBytes_Check(protocol)) {
            PyErr_SetString(PyExc_TypeError, "alpn must be a tuple of bytes");
            return -1;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(protocol);
        if (length < 1 || length > 255) {
            PyErr_Format(PyExc_ValueError, "an ALPN protocol is 1 to 255 bytes, not %zd", length);
            return -1;
        }
        total += 1 + length;
        if (total > 65535) {
            PyErr_SetString(PyExc_ValueError, "the ALPN list is longer than 65535 bytes");
            return -1;
        }
    }
    if (total == 0)
        return 0;
    self->alpn = PyMem_Malloc((size_t)total);
    if (self->alpn == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    unsigned char *at = self->alpn;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *protocol = PyTuple_GET_ITEM(protocols, i);
        Py_ssize_t length = PyBytes_GET_SIZE(protocol);
        *at++ = (unsigned char)length;
        memcpy(at, PyBytes_AS_STRING(protocol), (size_t)length);
        at += length;
    }
    self->alpn_length = (unsigned int)total;
    return 0;
}

static int
Context_init(Context *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"chain", "key", "alpn", "session_tickets", "tls12_ciphers", "tls13_suites",
                             "groups", NULL};
    Py_buffer chain, key;
    PyObject *alpn;
    int tickets;
    const char *ciphers, *suites, *groups;
    if (self->ctx != NULL) {
        PyErr_SetString(PyExc_TypeError, "Context is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*O!pyyy:Context", kwlist, &chain, &key, &PyTuple_Type,
                                     &alpn, &tickets, &ciphers, &suites, &groups))
        return -1;
    int rc = -1;
    if (chain.len > INT_MAX || key.len > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "the chain or key is too long");
        goto done;
    }
    if (alpn_list(self, alpn) < 0)
        goto done;
    clear_errors();
    SSL_CTX *ctx = self->ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        set_ssl_error("SSL_CTX_new");
        goto done;
    }
    /* Mozilla "intermediate": TLS 1.2 and 1.3, forward-secret AEAD suites,
       the client's preference (kongacme.tls.context's constants). */
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 || SSL_CTX_set_cipher_list(ctx, ciphers) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, suites) != 1 || SSL_CTX_set1_groups_list(ctx, groups) != 1) {
        set_ssl_error("the TLS profile");
        goto done;
    }
    /* A FIN without close_notify reads as the end of the stream (forwarded
       as a half-close), as in every kongacme context. */
    uint64_t options = SSL_OP_NO_COMPRESSION | SSL_OP_SINGLE_ECDH_USE | SSL_OP_NO_RENEGOTIATION |
                       SSL_OP_IGNORE_UNEXPECTED_EOF;
    if (!tickets)
        options |= SSL_OP_NO_TICKET;
    SSL_CTX_set_options(ctx, options);
    SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* No server-side session cache (tickets carry resumption): what the
       standard library cannot turn off, so TLS 1.2 clients may come here. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"kongacme", 8);
    /* One ticket per TLS 1.3 handshake (OpenSSL's default is two), or none. */
    SSL_CTX_set_num_tickets(ctx, tickets ? 1 : 0);
    /* Idle connections give their record buffers back, as the other two
       bindings' contexts do. Writes are whole (no partial-write mode). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* An empty key: a shared context, the chain its intermediates only. */
    self->shared = key.len == 0;
    if (load_chain(ctx, chain.buf, chain.len, !self->shared) < 0 ||
        (!self->shared && load_key(ctx, key.buf, key.len) < 0))
        goto done;
    if (self->alpn_length)
        SSL_CTX_set_alpn_select_cb(ctx, select_alpn, self);
    rc = 0;
done:
    if (rc < 0) { /* nothing half-made is kept: a session cannot be made on it */
        SSL_CTX_free(self->ctx);
        self->ctx = NULL;
        PyMem_Free(self->alpn);
        self->alpn = NULL;
        self->alpn_length = 0;
    }
    PyBuffer_Release(&chain);
    PyBuffer_Release(&key);
    return rc;
}

static void
Context_dealloc(Context *self)
{
    SSL_CTX_free(self->ctx);
    PyMem_Free(self->alpn);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Context_sessions_cached(Context *self, PyObject *Py_UNUSED(ignored))
{
    if (self->ctx == NULL)
        return PyLong_FromLong(0);
    return PyLong_FromLong(SSL_CTX_sess_number(self->ctx));
}

static PyObject *
Context_get_shared(Context *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->shared);
}

static PyMethodDef Context_methods[] = {
    {"sessions_cached", (PyCFunction)Context_sessions_cached, METH_NOARGS,
     "sessions_cached() -> int: sessions in OpenSSL's server cache (it is off: always 0)."},
    {NULL},
};

static PyGetSetDef Context_getset[] = {
    {"shared", (getter)Context_get_shared, NULL,
     "True: no leaf and key of its own (each session brings its Certificate).", NULL},
    {NULL},
};

/* -- Certificate ----------------------------------------------------------- */

/* A leaf and its key, parsed once, for sessions on a shared context. */
typedef struct {
    PyObject_HEAD
    X509 *leaf;
    EVP_PKEY *key;
} Certificate;

/*
 * The private key in `der` (its traditional form when `type` is
 * EVP_PKEY_EC or EVP_PKEY_RSA), or NULL with OpenSSL's error queued.
 *
 * OpenSSL 3.0 decodes a key through its provider decoders: ~80 us for a
 * P-256 key told its type, ~330 us guessing it (d2i_AutoPrivateKey). The
 * type's own decoder (d2i_ECPrivateKey, d2i_RSAPrivateKey: deprecated in
 * 3.0, kept where the library still has them) takes ~10 us, and OpenSSL
 * moves the key to its provider once, when the key is first used. A leaf's
 * first connection pays this (kongacme.tls.stdlib, CERTIFICATE_AFTER).
 */
static EVP_PKEY *
decode_key(int type, const unsigned char *der, long len)
{
    const unsigned char *at = der;
#ifndef OPENSSL_NO_DEPRECATED_3_0
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    if (type == EVP_PKEY_EC || type == EVP_PKEY_RSA) {
        EVP_PKEY *pkey = EVP_PKEY_new();
        if (pkey == NULL)
            return NULL;
        int assigned = 0;
        if (type == EVP_PKEY_EC) {
            EC_KEY *ec = d2i_ECPrivateKey(NULL, &at, len);
            assigned = ec != NULL && at == der + len && EVP_PKEY_assign_EC_KEY(pkey, ec) == 1;
            if (!assigned)
                EC_KEY_free(ec);
        } else {
            RSA *rsa = d2i_RSAPrivateKey(NULL, &at, len);
            assigned = rsa != NULL && at == der + len && EVP_PKEY_assign_RSA(pkey, rsa) == 1;
            if (!assigned)
                RSA_free(rsa);
        }
        if (assigned)
            return pkey;
        EVP_PKEY_free(pkey);
        return NULL;
    }
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif
    return type != EVP_PKEY_NONE ? d2i_PrivateKey(type, NULL, &at, len) : d2i_AutoPrivateKey(NULL, &at, len);
}

static int
Certificate_init(Certificate *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"leaf", "key", "kind", NULL};
    Py_buffer leaf, key;
    const char *kind = "";
    if (self->leaf != NULL) {
        PyErr_SetString(PyExc_TypeError, "Certificate is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*|s:Certificate", kwlist, &leaf, &key, &kind))
        return -1;
    int rc = -1;
    clear_errors();
    const unsigned char *at = leaf.buf;
    X509 *x509 = d2i_X509(NULL, &at, (long)leaf.len);
    if (x509 == NULL || at != (const unsigned char *)leaf.buf + leaf.len) {
        X509_free(x509);
        set_ssl_error("the certificate (DER)");
        goto done;
    }
    int type = strcmp(kind, "EC") == 0 ? EVP_PKEY_EC : strcmp(kind, "RSA") == 0 ? EVP_PKEY_RSA : EVP_PKEY_NONE;
    EVP_PKEY *pkey = decode_key(type, key.buf, (long)key.len);
    if (pkey == NULL) {
        X509_free(x509);
        set_ssl_error("the key (DER)");
        goto done;
    }
    if (X509_check_private_key(x509, pkey) != 1) {
        X509_free(x509);
        EVP_PKEY_free(pkey);
        set_ssl_error("the key does not belong to the certificate");
        goto done;
    }
    self->leaf = x509;
    self->key = pkey;
    rc = 0;
done:
    PyBuffer_Release(&leaf);
    PyBuffer_Release(&key);
    return rc;
}

static void
Certificate_dealloc(Certificate *self)
{
    X509_free(self->leaf);
    EVP_PKEY_free(self->key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CertificateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kongacme.tls._openssl.Certificate",
    .tp_basicsize = sizeof(Certificate),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Certificate(leaf, key, kind=''): a DER leaf and its DER private key (`kind`: "
                        "\"EC\" or \"RSA\" when known, the traditional form), parsed once, for "
                        "Session(shared_context, certificate); ssl.SSLError if OpenSSL refuses them or the "
                        "key does not belong to the leaf."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Certificate_init,
    .tp_dealloc = (destructor)Certificate_dealloc,
};

static PyTypeObject ContextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kongacme.tls._openssl.Context",
    .tp_basicsize = sizeof(Context),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Context(chain, key, alpn, session_tickets, tls12_ciphers, tls13_suites, groups): "
                        "a server context presenting the PEM `chain` (the leaf first) with the PEM `key`; "
                        "with an empty `key`, a shared context: `chain` holds intermediates only, sent "
                        "after the leaf each Session(context, certificate) brings; "
                        "ssl.SSLError if OpenSSL refuses them."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Context_init,
    .tp_dealloc = (destructor)Context_dealloc,
    .tp_methods = Context_methods,
    .tp_getset = Context_getset,
};

/* -- Session -------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    SSL *ssl;
    BIO *in;  /* ciphertext from the client (the SSL owns both BIOs) */
    BIO *out; /* ciphertext to the client */
    PyObject *context; /* outlives the SSL: its SSL_CTX and ALPN list */
} Session;

static PyTypeObject SessionType;

static PyObject *
Session_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *context, *certificate = Py_None;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Session(context[, certificate]) takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!|O:Session", &ContextType, &context, &certificate))
        return NULL;
    if (((Context *)context)->ctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "Session: the context was never initialised");
        return NULL;
    }
    Certificate *leaf = NULL;
    if (certificate != Py_None) {
        if (!Py_IS_TYPE(certificate, &CertificateType) || ((Certificate *)certificate)->leaf == NULL) {
            PyErr_SetString(PyExc_TypeError, "Session: certificate must be an initialised Certificate");
            return NULL;
        }
        if (!((Context *)context)->shared) {
            PyErr_SetString(PyExc_ValueError, "Session: the context has a leaf of its own");
            return NULL;
        }
        leaf = (Certificate *)certificate;
    } else if (((Context *)context)->shared) {
        PyErr_SetString(PyExc_ValueError, "Session: a shared context needs a certificate");
        return NULL;
    }
    Session *self = (Session *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    clear_errors();
    self->ssl = SSL_new(((Context *)context)->ctx);
    self->in = BIO_new(BIO_s_mem());
    self->out = BIO_new(BIO_s_mem());
    if (self->ssl == NULL || self->in == NULL || self->out == NULL) {
        set_ssl_error("a new session");
        goto fail;
    }
    /* The leaf first: OpenSSL checks the key against it (both are shared, counted). */
    if (leaf != NULL && (SSL_use_certificate(self->ssl, leaf->leaf) != 1 ||
                         SSL_use_PrivateKey(self->ssl, leaf->key) != 1)) {
        set_ssl_error("the session's certificate");
        goto fail;
    }
    /* An empty BIO is "no more yet" (retry), until feed_eof. */
    BIO_set_mem_eof_return(self->in, -1);
    BIO_set_mem_eof_return(self->out, -1);
    SSL_set_bio(self->ssl, self->in, self->out);
    SSL_set_accept_state(self->ssl);
    self->context = Py_NewRef(context);
    return (PyObject *)self;

fail:
    /* The error is read (set_ssl_error) before SSL_free can touch the queue.
       The BIOs are not the SSL's yet; the SSL goes with the object. */
    BIO_free(self->in);
    BIO_free(self->out);
    self->in = self->out = NULL;
    Py_DECREF(self);
    return NULL;
}

static void
Session_dealloc(Session *self)
{
    SSL_free(self->ssl); /* and its BIOs */
    Py_XDECREF(self->context);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Ciphertext in: 0, or -1 with an exception set. */
static int
feed_bytes(Session *self, const char *data, Py_ssize_t size)
{
    if (size > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "feed: more than INT_MAX bytes at once");
        return -1;
    }
    if (size > 0 && BIO_write(self->in, data, (int)size) != (int)size) {
        set_ssl_error("feed");
        return -1;
    }
    return 0;
}

static PyObject *
Session_feed(Session *self, PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        if (feed_bytes(self, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) < 0)
            return NULL;
        return PyLong_FromSsize_t(PyBytes_GET_SIZE(data));
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = feed_bytes(self, view.buf, view.len);
    Py_ssize_t size = view.len;
    PyBuffer_Release(&view);
    return rc < 0 ? NULL : PyLong_FromSsize_t(size);
}

static PyObject *
Session_feed_eof(Session *self, PyObject *Py_UNUSED(ignored))
{
    BIO_set_mem_eof_return(self->in, 0);
    Py_RETURN_NONE;
}

static PyObject *
Session_do_handshake(Session *self, PyObject *Py_UNUSED(ignored))
{
    clear_errors();
    int r = SSL_do_handshake(self->ssl);
    if (r == 1)
        Py_RETURN_NONE;
    set_session_error(SSL_get_error(self->ssl, r), "do_handshake");
    return NULL;
}

/* SSL_read_ex into `into` (`room` bytes): SSL_ERROR_NONE with *got, or SSL_get_error's kind. */
static int
read_plain(Session *self, char *into, Py_ssize_t room, size_t *got)
{
    *got = 0;
    clear_errors();
    if (SSL_read_ex(self->ssl, into, (size_t)room, got) == 1)
        return SSL_ERROR_NONE;
    return SSL_get_error(self->ssl, 0);
}

/*
 * Plaintext out into `into` (`room` bytes): its length; 0 at the client's
 * close_notify or FIN (the end, as the standard library's read gives b""
 * for it); -1 with an exception set (ssl.SSLWantReadError: no whole record).
 */
static Py_ssize_t
read_into(Session *self, char *into, Py_ssize_t room)
{
    size_t got;
    int kind = read_plain(self, into, room, &got);
    if (kind == SSL_ERROR_NONE)
        return (Py_ssize_t)got;
    if (kind == SSL_ERROR_ZERO_RETURN) {
        clear_errors();
        return 0;
    }
    set_session_error(kind, "read");
    return -1;
}

static PyObject *
Session_read(Session *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "read(size[, buffer])");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[0]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "read: size should not be negative");
        return NULL;
    }
    if (nargs == 2 && args[1] != Py_None) {
        Py_buffer view;
        if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
            return NULL;
        if (size == 0 || size > view.len)
            size = view.len;
        Py_ssize_t got = size == 0 ? 0 : read_into(self, view.buf, size);
        PyBuffer_Release(&view);
        return got < 0 ? NULL : PyLong_FromSsize_t(got);
    }
    if (size == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    PyObject *plain = PyBytes_FromStringAndSize(NULL, size);
    if (plain == NULL)
        return NULL;
    Py_ssize_t got = read_into(self, PyBytes_AS_STRING(plain), size);
    if (got < 0) {
        Py_DECREF(plain);
        return NULL;
    }
    if (got != size && _PyBytes_Resize(&plain, got) < 0)
        return NULL;
    return plain;
}

/* Plaintext in, all of it (memory BIOs: a write never waits): 0, or -1 with an exception set. */
static int
write_bytes(Session *self, const char *data, Py_ssize_t size)
{
    size_t written;
    if (size == 0)
        return 0;
    clear_errors();
    int r = SSL_write_ex(self->ssl, data, (size_t)size, &written);
    if (r == 1 && written == (size_t)size)
        return 0;
    set_session_error(SSL_get_error(self->ssl, r), "write");
    return -1;
}

static PyObject *
Session_write(Session *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = write_bytes(self, view.buf, view.len);
    Py_ssize_t size = view.len;
    PyBuffer_Release(&view);
    return rc < 0 ? NULL : PyLong_FromSsize_t(size);
}

/* Ciphertext out: up to `size` bytes (-1: all there is); b"" when there is none. */
static PyObject *
take_bytes(Session *self, Py_ssize_t size)
{
    size_t pending = BIO_ctrl_pending(self->out);
    if (size < 0 || (size_t)size > pending)
        size = (Py_ssize_t)pending;
    if (size > INT_MAX)
        size = INT_MAX;
    PyObject *records = PyBytes_FromStringAndSize(NULL, size);
    if (records == NULL || size == 0)
        return records;
    int got = BIO_read(self->out, PyBytes_AS_STRING(records), (int)size);
    if (got != (int)size) {
        Py_DECREF(records);
        set_ssl_error("take");
        return NULL;
    }
    return records;
}

static PyObject *
Session_take(Session *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size = -1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "take([size])");
        return NULL;
    }
    if (nargs == 1) {
        size = PyLong_AsSsize_t(args[0]);
        if (size == -1 && PyErr_Occurred())
            return NULL;
    }
    return take_bytes(self, size);
}

static PyObject *
Session_seal(Session *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = write_bytes(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    PyObject *records = take_bytes(self, -1);
    if (records == NULL)
        return NULL;
    return Py_BuildValue("(NO)", records, Py_False);
}

static PyObject *
Session_close_notify(Session *self, PyObject *Py_UNUSED(ignored))
{
    /* Ours is written (to take); the client's may be still to come, or the
       handshake never finished: nothing to say either way. */
    clear_errors();
    (void)SSL_shutdown(self->ssl);
    clear_errors();
    Py_RETURN_NONE;
}

static PyObject *
Session_is_tls13(Session *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(SSL_version(self->ssl) == TLS1_3_VERSION);
}

static PyObject *
Session_alpn(Session *self, PyObject *Py_UNUSED(ignored))
{
    const unsigned char *chosen = NULL;
    unsigned int length = 0;
    SSL_get0_alpn_selected(self->ssl, &chosen, &length);
    if (chosen == NULL || length == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)chosen, length);
}

static PyObject *
Session_version(Session *self, PyObject *Py_UNUSED(ignored))
{
    if (!SSL_is_init_finished(self->ssl))
        Py_RETURN_NONE;
    return PyUnicode_FromString(SSL_get_version(self->ssl));
}

static PyObject *
Session_cipher(Session *self, PyObject *Py_UNUSED(ignored))
{
    const SSL_CIPHER *cipher = SSL_get_current_cipher(self->ssl);
    if (cipher == NULL)
        Py_RETURN_NONE;
    return PyUnicode_FromString(SSL_CIPHER_get_name(cipher));
}

static PyObject *
Session_session_reused(Session *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(SSL_session_reused(self->ssl));
}

static PyObject *
Session_release(Session *Py_UNUSED(self), PyObject *Py_UNUSED(ignored))
{
    Py_RETURN_NONE; /* no cycle to break: the session holds no Python owner */
}

static PyObject *
Session_whole_writes(Session *Py_UNUSED(self), void *Py_UNUSED(closure))
{
    Py_RETURN_TRUE;
}

static PyMethodDef Session_methods[] = {
    {"feed", (PyCFunction)Session_feed, METH_O, "feed(data) -> int: ciphertext from the client, all of it."},
    {"feed_eof", (PyCFunction)Session_feed_eof, METH_NOARGS, "feed_eof(): the client's FIN: no more ciphertext."},
    {"do_handshake", (PyCFunction)Session_do_handshake, METH_NOARGS,
     "do_handshake(): on with the handshake; ssl.SSLWantReadError until it is done."},
    {"read", (PyCFunction)(void (*)(void))Session_read, METH_FASTCALL,
     "read(size[, buffer]) -> bytes or int: plaintext; b\"\" (0) at the client's close_notify or FIN; "
     "ssl.SSLWantReadError without a whole record."},
    {"write", (PyCFunction)Session_write, METH_O, "write(data) -> int: plaintext to seal, all of it."},
    {"take", (PyCFunction)(void (*)(void))Session_take, METH_FASTCALL,
     "take([size]) -> bytes: ciphertext to send (all of it by default); b\"\" when there is none."},
    {"seal", (PyCFunction)Session_seal, METH_O,
     "seal(data) -> (records, False): data as records (nothing is ever left to take)."},
    {"close_notify", (PyCFunction)Session_close_notify, METH_NOARGS, "close_notify(): write ours (to take)."},
    {"is_tls13", (PyCFunction)Session_is_tls13, METH_NOARGS, "is_tls13() -> bool"},
    {"alpn", (PyCFunction)Session_alpn, METH_NOARGS, "alpn() -> bytes | None: the protocol ALPN chose."},
    {"version", (PyCFunction)Session_version, METH_NOARGS,
     "version() -> str | None: \"TLSv1.3\" or \"TLSv1.2\" once the handshake is done."},
    {"cipher", (PyCFunction)Session_cipher, METH_NOARGS, "cipher() -> str | None: the suite's OpenSSL name."},
    {"session_reused", (PyCFunction)Session_session_reused, METH_NOARGS,
     "session_reused() -> bool: the handshake resumed a session (a ticket)."},
    {"release", (PyCFunction)Session_release, METH_NOARGS, "release(): nothing to break (see PyOpenSSLSession)."},
    {NULL},
};

static PyGetSetDef Session_getset[] = {
    {"whole_writes", (getter)Session_whole_writes, NULL,
     "True: write takes all of the plaintext and take() empties the BIO (what the compiled steady state needs).",
     NULL},
    {NULL},
};

static PyMemberDef Session_members[] = {
    {"context", T_OBJECT, offsetof(Session, context), READONLY, "The Context this session is on."},
    {NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kongacme.tls._openssl.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Session(context[, certificate]): a server-side TLS session over two memory BIOs "
                        "(a shared context's sessions bring their Certificate)."),
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
    .tp_members = Session_members,
};

/* -- the C API (_openssl.h) ----------------------------------------------- */

static Py_ssize_t
api_open_record(PyObject *session, const char *ciphertext, Py_ssize_t size, char *plain, Py_ssize_t room)
{
    Session *self = (Session *)session;
    if (feed_bytes(self, ciphertext, size) < 0)
        return KONGACME_FAILED;
    size_t got;
    int kind = read_plain(self, plain, room, &got);
    if (kind == SSL_ERROR_NONE)
        return (Py_ssize_t)got;
    if (kind == SSL_ERROR_WANT_READ) {
        clear_errors();
        return KONGACME_NO_DATA;
    }
    if (kind == SSL_ERROR_ZERO_RETURN) {
        clear_errors();
        return KONGACME_ENDED;
    }
    set_session_error(kind, "read");
    return KONGACME_FAILED;
}

/* Where seal's records are read out of the BIO: grown as needed, kept. */
static char *sealed = NULL;
static size_t sealed_size = 0;

/* All the records OpenSSL has written, into `sealed`: their length, or -1 with an exception set. */
static Py_ssize_t
take_sealed(Session *self, const char **records)
{
    size_t pending = BIO_ctrl_pending(self->out);
    if (pending > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "seal: more than INT_MAX bytes of records");
        return -1;
    }
    if (pending > sealed_size) {
        char *grown = PyMem_RawRealloc(sealed, pending);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        sealed = grown;
        sealed_size = pending;
    }
    if (pending > 0 && BIO_read(self->out, sealed, (int)pending) != (int)pending) {
        set_ssl_error("take");
        return -1;
    }
    *records = sealed;
    return (Py_ssize_t)pending;
}

static Py_ssize_t
api_seal(PyObject *session, const char *plain, Py_ssize_t size, const char **records)
{
    Session *self = (Session *)session;
    if (write_bytes(self, plain, size) < 0)
        return -1;
    return take_sealed(self, records);
}

static Py_ssize_t
api_close_notify(PyObject *session, const char **records)
{
    Session *self = (Session *)session;
    PyObject *done = Session_close_notify(self, NULL);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return take_sealed(self, records);
}

static int
api_handshake(PyObject *session, const char *ciphertext, Py_ssize_t size)
{
    Session *self = (Session *)session;
    if (feed_bytes(self, ciphertext, size) < 0)
        return -1;
    clear_errors();
    int r = SSL_do_handshake(self->ssl);
    if (r == 1)
        return 1;
    int kind = SSL_get_error(self->ssl, r);
    if (kind == SSL_ERROR_WANT_READ) {
        clear_errors();
        return 0;
    }
    set_session_error(kind, "do_handshake");
    return -1;
}

static Py_ssize_t
api_take(PyObject *session, const char **records)
{
    return take_sealed((Session *)session, records);
}

static int
api_is_tls13(PyObject *session)
{
    return SSL_version(((Session *)session)->ssl) == TLS1_3_VERSION;
}

static KongacmeOpenSSL_API api = {
    .version = KONGACME_OPENSSL_API_VERSION,
    .session_type = &SessionType,
    .open_record = api_open_record,
    .seal = api_seal,
    .close_notify = api_close_notify,
    .handshake = api_handshake,
    .take = api_take,
    .is_tls13 = api_is_tls13,
};

/* -- the module ------------------------------------------------------------ */

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kongacme.tls._openssl",
    .m_doc = PyDoc_STR("kongacme's own binding of OpenSSL's server side over memory BIOs."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__openssl(void)
{
    PyObject *ssl = PyImport_ImportModule("ssl");
    if (ssl == NULL)
        return NULL;
    SSLError = PyObject_GetAttrString(ssl, "SSLError");
    SSLWantReadError = PyObject_GetAttrString(ssl, "SSLWantReadError");
    SSLZeroReturnError = PyObject_GetAttrString(ssl, "SSLZeroReturnError");
    SSLEOFError = PyObject_GetAttrString(ssl, "SSLEOFError");
    Py_DECREF(ssl);
    if (SSLError == NULL || SSLWantReadError == NULL || SSLZeroReturnError == NULL || SSLEOFError == NULL)
        return NULL;
    if (PyType_Ready(&ContextType) < 0 || PyType_Ready(&CertificateType) < 0 || PyType_Ready(&SessionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    PyObject *capsule = PyCapsule_New(&api, KONGACME_OPENSSL_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObjectRef(m, "Context", (PyObject *)&ContextType) < 0 ||
        PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddObjectRef(m, "Certificate", (PyObject *)&CertificateType) < 0 ||
        PyModule_AddObjectRef(m, "_C_API", capsule) < 0 ||
        PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(capsule);
    return m;
}
