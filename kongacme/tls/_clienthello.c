/*
 * kongacme.tls._clienthello: the ClientHello reader of
 * kongacme/tls/clienthello.py, compiled. It runs once per connection on the
 * handshake path, before OpenSSL sees a byte, on whatever a client sent:
 * every length is checked against what is there before it is used.
 *
 * parse(buffer, size=-1) -> None | (raw_server_name, alpn_offered, offers_tls13)
 *
 *   None: more bytes are needed. Otherwise the first host_name of the
 *   server_name extension as sent (bytes, or None), the ALPN protocol names
 *   in the client's order (a tuple of bytes) and whether supported_versions
 *   lists TLS 1.3. Bytes that are not a ClientHello raise
 *   kongacme.errors.ClientHelloError with the same message as the Python
 *   reader (clienthello._parse_parts, the reference the tests hold this to).
 *
 * Layouts: records RFC 8446 §5.1, ClientHello §4.1.2, extensions §4.2
 * (no duplicates), server_name RFC 6066 §3, ALPN RFC 7301 §3.1,
 * supported_versions RFC 8446 §4.2.1.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* clienthello.MAX_CLIENT_HELLO */
#define MAX_CLIENT_HELLO (32 * 1024)
#define MAX_RECORD 16384
#define HANDSHAKE 0x16
#define CLIENT_HELLO 0x01
#define EXT_SERVER_NAME 0
#define EXT_ALPN 16
#define EXT_SUPPORTED_VERSIONS 43

static PyObject *ClientHelloError;

static int
fail(const char *message)
{
    PyErr_SetString(ClientHelloError, message);
    return -1;
}

#define U16(p) ((Py_ssize_t)(p)[0] << 8 | (Py_ssize_t)(p)[1])
#define U24(p) ((Py_ssize_t)(p)[0] << 16 | (Py_ssize_t)(p)[1] << 8 | (Py_ssize_t)(p)[2])

/*
 * The first handshake message, from one or more handshake records.
 * 1: found (*msg, *msg_len; *owned is a PyMem block to free, or NULL when
 * it points into b); 0: more bytes are needed; -1: an error is set.
 */
static int
handshake_bytes(const unsigned char *b, Py_ssize_t len, const unsigned char **msg, Py_ssize_t *msg_len,
                unsigned char **owned)
{
    *owned = NULL;
    if (len >= 9 && b[0] == HANDSHAKE && b[1] == 3 && b[5] == CLIENT_HELLO) {
        /* The usual case: the first record holds the whole ClientHello. */
        Py_ssize_t record = U16(b + 3);
        Py_ssize_t whole = 4 + U24(b + 6);
        if (whole <= record && record <= MAX_RECORD && len >= 5 + record) {
            *msg = b + 5;
            *msg_len = whole;
            return 1;
        }
    }
    unsigned char *message = NULL; /* the records' bodies, joined: at most len bytes */
    Py_ssize_t have = 0, pos = 0, needed = -1;
    while (len - pos >= 5) {
        Py_ssize_t length = U16(b + pos + 3);
        if (b[pos] != HANDSHAKE || b[pos + 1] != 3)
            goto not_records;
        if (length == 0 || length > MAX_RECORD) {
            PyMem_Free(message);
            return fail("bad TLS record length");
        }
        if (len - pos - 5 < length) {
            if (have == 0 && len - pos >= 9) {
                /* Judge the handshake header before the record is whole,
                 * so a hostile length is refused without buffering for it. */
                const unsigned char *head = b + pos + 5;
                if (head[0] != CLIENT_HELLO)
                    return fail("first handshake message is not a ClientHello");
                if (4 + U24(head + 1) > MAX_CLIENT_HELLO)
                    return fail("ClientHello too large");
            }
            break;
        }
        if (message == NULL) {
            message = PyMem_Malloc((size_t)len);
            if (message == NULL) {
                PyErr_NoMemory();
                return -1;
            }
        }
        memcpy(message + have, b + pos + 5, (size_t)length);
        have += length;
        pos += 5 + length;
        if (needed < 0 && have >= 4) {
            if (message[0] != CLIENT_HELLO) {
                PyMem_Free(message);
                return fail("first handshake message is not a ClientHello");
            }
            needed = 4 + U24(message + 1);
            if (needed > MAX_CLIENT_HELLO) {
                PyMem_Free(message);
                return fail("ClientHello too large");
            }
        }
        if (needed >= 0 && have >= needed) {
            *msg = message;
            *msg_len = needed;
            *owned = message;
            return 1;
        }
    }
    PyMem_Free(message);
    if (len > MAX_CLIENT_HELLO + 64)
        return fail("ClientHello too large");
    if ((len >= 1 && b[0] != HANDSHAKE) || (len >= 2 && b[1] != 3))
        return fail("not a TLS handshake record");
    return 0;

not_records:
    PyMem_Free(message);
    return fail("not a TLS handshake record");
}

/* The first host_name of a server_name extension body [pos, end): a new
 * bytes object, Py_None (a new reference) when there is none, NULL on error. */
static PyObject *
first_host_name(const unsigned char *m, Py_ssize_t pos, Py_ssize_t end)
{
    if (pos + 2 > end || pos + 2 + U16(m + pos) != end) {
        fail("bad server_name extension");
        return NULL;
    }
    pos += 2;
    Py_ssize_t found = -1, found_end = -1;
    while (pos < end) {
        if (pos + 3 > end) {
            fail("bad server_name extension");
            return NULL;
        }
        Py_ssize_t stop = pos + 3 + U16(m + pos + 1);
        if (stop > end) {
            fail("bad server_name extension");
            return NULL;
        }
        if (m[pos] == 0 && found < 0) {
            found = pos + 3;
            found_end = stop;
        }
        pos = stop;
    }
    if (found < 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)m + found, found_end - found);
}

/* The protocol names of an ALPN extension body [pos, end), appended to into. */
static int
alpn_names(const unsigned char *m, Py_ssize_t pos, Py_ssize_t end, PyObject *into)
{
    if (pos + 2 > end || pos + 2 + U16(m + pos) != end)
        return fail("bad ALPN extension");
    pos += 2;
    while (pos < end) {
        Py_ssize_t stop = pos + 1 + m[pos];
        if (stop > end)
            return fail("bad ALPN extension");
        PyObject *name = PyBytes_FromStringAndSize((const char *)m + pos + 1, stop - pos - 1);
        if (name == NULL)
            return -1;
        int failed = PyList_Append(into, name);
        Py_DECREF(name);
        if (failed)
            return -1;
        pos = stop;
    }
    return 0;
}

/* Whether a supported_versions body [pos, end) lists TLS 1.3 (0x0304). */
static int
offers_tls13(const unsigned char *m, Py_ssize_t pos, Py_ssize_t end)
{
    if (pos >= end)
        return 0;
    Py_ssize_t last = pos + 1 + m[pos];
    if (last > end)
        last = end;
    for (Py_ssize_t at = pos + 1; at + 1 < last; at += 2) {
        if (m[at] == 3 && m[at + 1] == 4)
            return 1;
    }
    return 0;
}

/* The extension types seen in one hello: a bitmap, cleared after each use
 * by the list of what was set (a hello has at most 8,192 extensions). */
static uint64_t seen_bits[65536 / 64];

static PyObject *
parse_message(const unsigned char *m, Py_ssize_t n)
{
    Py_ssize_t pos = 4 + 2 + 32; /* handshake header, legacy_version, random */
    if (pos >= n)
        return fail("truncated ClientHello"), NULL;
    pos += 1 + m[pos]; /* legacy_session_id */
    if (pos + 2 > n)
        return fail("truncated ClientHello"), NULL;
    Py_ssize_t suites = U16(m + pos);
    if (suites == 0 || (suites & 1))
        return fail("bad cipher suite list"), NULL;
    pos += 2 + suites;
    if (pos >= n)
        return fail("truncated ClientHello"), NULL;
    pos += 1 + m[pos]; /* legacy_compression_methods */
    if (pos > n)
        return fail("truncated ClientHello"), NULL;

    PyObject *raw_name = NULL, *alpn = PyList_New(0), *result = NULL;
    int tls13 = 0;
    uint16_t *types = NULL;
    Py_ssize_t count = 0;
    if (alpn == NULL)
        return NULL;
    if (pos < n) {
        if (pos + 2 > n) {
            fail("truncated ClientHello");
            goto done;
        }
        Py_ssize_t ext_end = pos + 2 + U16(m + pos);
        pos += 2;
        if (ext_end > n) {
            fail("truncated ClientHello");
            goto done;
        }
        types = PyMem_Malloc(sizeof(uint16_t) * (size_t)((ext_end - pos) / 4 + 1));
        if (types == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        while (pos < ext_end) {
            if (pos + 4 > ext_end) {
                fail("truncated extension");
                goto done;
            }
            unsigned int type = (unsigned int)U16(m + pos);
            Py_ssize_t end = pos + 4 + U16(m + pos + 2);
            pos += 4;
            if (end > ext_end) {
                fail("truncated extension");
                goto done;
            }
            if (seen_bits[type >> 6] & ((uint64_t)1 << (type & 63))) {
                /* RFC 8446 §4.2: duplicate extensions are illegal. */
                PyErr_Format(ClientHelloError, "duplicate extension %u", type);
                goto done;
            }
            seen_bits[type >> 6] |= (uint64_t)1 << (type & 63);
            types[count++] = (uint16_t)type;
            if (type == EXT_SERVER_NAME && end > pos) {
                raw_name = first_host_name(m, pos, end);
                if (raw_name == NULL)
                    goto done;
            } else if (type == EXT_ALPN) {
                if (alpn_names(m, pos, end, alpn) < 0)
                    goto done;
            } else if (type == EXT_SUPPORTED_VERSIONS) {
                tls13 = offers_tls13(m, pos, end);
            }
            pos = end;
        }
    }
    {
        PyObject *names = PyList_AsTuple(alpn);
        if (names != NULL) {
            result = PyTuple_Pack(3, raw_name != NULL ? raw_name : Py_None, names, tls13 ? Py_True : Py_False);
            Py_DECREF(names);
        }
    }
done:
    for (Py_ssize_t i = 0; i < count; i++)
        seen_bits[types[i] >> 6] = 0;
    PyMem_Free(types);
    Py_XDECREF(raw_name);
    Py_DECREF(alpn);
    return result;
}

static PyObject *
parse(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "parse(buffer, size=-1)");
        return NULL;
    }
    Py_ssize_t size = -1;
    if (nargs == 2) {
        size = PyLong_AsSsize_t(args[1]);
        if (size == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t len = view.len;
    if (size >= 0 && size < len)
        len = size;
    const unsigned char *msg;
    Py_ssize_t msg_len;
    unsigned char *owned;
    PyObject *result;
    int found = handshake_bytes(view.buf, len, &msg, &msg_len, &owned);
    if (found < 0)
        result = NULL;
    else if (found == 0)
        result = Py_NewRef(Py_None);
    else
        result = parse_message(msg, msg_len);
    PyMem_Free(owned);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(buffer, size=-1): None (more bytes needed) or (raw_server_name, alpn_offered, offers_tls13)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "kongacme.tls._clienthello",
    "The ClientHello reader of kongacme.tls.clienthello, compiled.", -1, methods,
};

PyMODINIT_FUNC
PyInit__clienthello(void)
{
    PyObject *errors = PyImport_ImportModule("kongacme.errors");
    if (errors == NULL)
        return NULL;
    ClientHelloError = PyObject_GetAttrString(errors, "ClientHelloError");
    Py_DECREF(errors);
    if (ClientHelloError == NULL)
        return NULL;
    return PyModule_Create(&module_def);
}
