/*
 * kongacme.engine._steady: the lean engine's event dispatch and the relay's
 * steady state, compiled (optional: without it the same work is done in
 * Python by kongacme.engine.loop and kongacme.engine.relay).
 *
 * dispatch() takes the ready events of the engine's epoll (epoll_wait on the
 * descriptor of its select.epoll, with no wait) and, for each:
 *
 * - an EPOLLIN alone on a socket of a relay in the steady state (its Pair is
 *   in the `steady` dict under that descriptor): the segment or reply is
 *   read, put through TLS and sent on the other socket here, with calls to
 *   the session's own methods (the standard library's MemoryBIO.write,
 *   SSLObject.read and .write) and direct recv/send on the descriptors;
 * - anything else, and any departure from the steady state (a record cut
 *   across segments, several records, a FIN, close_notify, an error, a
 *   short send): the relay's Python, exactly as the pure-Python path does it
 *   (Relay.on_events, Relay._left_steady).
 *
 * With a session of the own binding, more of a connection is done here:
 *
 * - the handshake after the ClientHello's answer (a pair made with no
 *   upstream descriptor, ufd -1): the client's flights fed, the server's
 *   sent; once done (TLS 1.3), the session tickets held for the first
 *   records to the client (Pair.held), the route's first address dialled,
 *   the relay told (Relay._established), and what came with the Finished
 *   sent upstream;
 * - the ends: the client's close_notify passed on upstream (shutdown), the
 *   upstream relayed on, and its FIN answered with our close_notify; the
 *   relay's Python then only releases the connection (BOTH_ENDED).
 *
 * Nothing here reaches into Python's, OpenSSL's or Twisted's internals: the
 * TLS objects are called through their public Python methods, and the
 * sockets are the kernel's. A session of kongacme's own binding
 * (kongacme.tls._openssl) is called through that module's C API instead
 * (its capsule, _openssl.h): OpenSSL straight from here, with no Python
 * object made per record. One process, one thread: the engine runs on
 * the reactor's thread with the GIL held (no wait, so it is never released).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "_openssl.h" /* kongacme/tls: the own binding's C API (no OpenSSL header) */

/* What Relay._left_steady is told (kongacme/engine/relay.py, the same names). */
enum {
    CLIENT_DATA = 0,    /* arg: what recv gave, not one whole record (b"": a FIN) */
    CLIENT_LOST = 1,    /* arg: the OSError of the client's socket */
    CLIENT_ENDED = 2,   /* close_notify */
    READ_FAILED = 3,    /* arg: the TLS error of read */
    UPSTREAM_LOST = 4,  /* arg: the OSError of the upstream's socket */
    UPSTREAM_SHORT = 5, /* arg: plaintext, sent: how much of it went */
    UPSTREAM_ENDED = 6, /* the upstream's FIN */
    CLIENT_SHORT = 7,   /* arg: records, sent: how much of them went */
    BOTH_ENDED = 8,     /* the upstream's FIN after the client's close_notify (client_ended): our close_notify
                           went to the client; arg: what of it the client did not take (None: all went), sent */
    HANDSHAKE_FAILED = 9,  /* arg: the TLS error of the handshake step (its alert is to take) */
    HANDSHAKEN = 10,       /* the handshake is done, not TLS 1.3: the rest is Relay._after_handshake's */
    CLIENT_PLAINTEXT = 11, /* arg: plaintext read after the handshake, then its end or an error (read again) */
};

#define MAX_EVENTS 256

/* Set by configure(): the exception classes (tuples) and read sizes. */
static PyObject *want_read_exc = NULL;
static PyObject *closed_exc = NULL;
static PyObject *tls_error_exc = NULL;
static Py_ssize_t read_size = 1 << 16;
static Py_ssize_t bulk_read_size = 1 << 18;

/* What recv() gives at the usual read size, and the plaintext OpenSSL gives
   of one record, are read into these (read_size bytes each, from
   configure()) and lent to the session's methods as memoryviews for the
   length of one call: no bytes object is made for them (what goes to the
   relay's Python is copied). The GIL is held throughout, and dispatch()
   is never entered again from inside it. */
static char *received = NULL;
static char *plaintext = NULL;
/* A writable memoryview of all of `plaintext`, made once: read(size, view). */
static PyObject *plaintext_view = NULL;

/* Up to this many bytes a copy (a bytes object from Python's small-object
   allocator) costs less than a memoryview (a tracked object) would. */
#define SMALL_COPY 512

static PyObject *str_on_events, *str_left_steady, *str_established;

/* kongacme.tls._openssl's C API, imported by configure() (NULL where it is
   not built, or of another version: a build out of step; its sessions are
   then called through their Python methods, as the standard library's are,
   and tests check Pair.native). */
static const KongacmeOpenSSL_API *openssl_api = NULL;

/* -- Pair: one relay's two descriptors and its session's methods ----------- */

typedef struct {
    PyObject_HEAD
    PyObject *relay;
    int cfd;
    int ufd;
    PyObject *feed;    /* ciphertext in: MemoryBIO.write */
    PyObject *read;    /* plaintext out: read(size) */
    PyObject *write;   /* plaintext in: write(data), all of it */
    PyObject *take;    /* ciphertext out: take(), all of it */
    PyObject *seconds; /* the reactor's clock */
    /* The session when it is kongacme.tls._openssl's: called through
       openssl_api instead of feed/read/write/take. */
    PyObject *native;
    unsigned long long client_steps;
    unsigned long long upstream_steps;
    unsigned long long departures;
    /* Relayed here and not yet taken by the relay (Pair.take): plaintext
       bytes from the client and bytes from the upstream, and the clock's
       time of the last of them (0: none). */
    unsigned long long client_bytes;
    unsigned long long upstream_bytes;
    double last_activity;
    /* Bytes asked of the upstream per recv (the relay's _upstream_read while
       the pair serves it: Relay._serve_compiled and _left_steady copy it). */
    Py_ssize_t upstream_read;
    /* Records held for the client (a bytes object, or NULL): the TLS 1.3
       session tickets the handshake made, which go out in the same send as
       the first records to the client (Relay._hold). */
    PyObject *held;
    /* The client's close_notify came in the steady state and was passed on
       upstream here: the upstream's write side shut, the client's descriptor
       watched for nothing (its mask 0); the upstream is still relayed to it. */
    int client_ended;
    /* The route's first address, dialled here once the handshake step has
       done the handshake (a pair made before it: ufd -1). */
    struct sockaddr_storage upstream;
    socklen_t upstream_length;
} Pair;

static int
Pair_traverse(Pair *self, visitproc visit, void *arg)
{
    Py_VISIT(self->relay);
    Py_VISIT(self->feed);
    Py_VISIT(self->read);
    Py_VISIT(self->write);
    Py_VISIT(self->take);
    Py_VISIT(self->seconds);
    Py_VISIT(self->native);
    Py_VISIT(self->held);
    return 0;
}

static int
Pair_clear(Pair *self)
{
    Py_CLEAR(self->relay);
    Py_CLEAR(self->feed);
    Py_CLEAR(self->read);
    Py_CLEAR(self->write);
    Py_CLEAR(self->take);
    Py_CLEAR(self->seconds);
    Py_CLEAR(self->native);
    Py_CLEAR(self->held);
    return 0;
}

static void
Pair_dealloc(Pair *self)
{
    PyObject_GC_UnTrack(self);
    Pair_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* `address` (family, host, port), an IP literal's, into the pair's upstream: 0, or -1 with an exception. */
static int
parse_upstream(Pair *self, PyObject *address)
{
    int family, port;
    const char *host;
    if (!PyArg_ParseTuple(address, "isi:upstream", &family, &host, &port))
        return -1;
    memset(&self->upstream, 0, sizeof self->upstream);
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "upstream: port %d", port);
        return -1;
    }
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&self->upstream;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
            self->upstream_length = sizeof *in;
            return 0;
        }
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&self->upstream;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
            self->upstream_length = sizeof *in6;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "upstream: not an address of family %d: %R", family, address);
    return -1;
}

static int
Pair_init(Pair *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"relay", "cfd", "ufd", "feed", "read", "write", "take", "seconds", "session", "upstream",
                             NULL};
    PyObject *relay, *feed, *read, *write, *take, *seconds, *session = Py_None, *upstream = Py_None;
    int cfd, ufd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiiOOOOO|OO:Pair", kwlist, &relay, &cfd, &ufd, &feed,
                                     &read, &write, &take, &seconds, &session, &upstream))
        return -1;
    int native = session != Py_None && openssl_api != NULL && Py_IS_TYPE(session, openssl_api->session_type);
    if (cfd < 0 || (ufd < 0 && (upstream == Py_None || !native))) {
        PyErr_SetString(PyExc_ValueError,
                        "Pair: descriptors must not be negative (but for the upstream's, with an upstream address "
                        "and a session of kongacme.tls._openssl's to do the handshake)");
        return -1;
    }
    Pair_clear(self);
    self->upstream_length = 0;
    self->client_ended = 0;
    if (ufd < 0 && parse_upstream(self, upstream) < 0)
        return -1;
    self->cfd = cfd;
    self->ufd = ufd < 0 ? -1 : ufd;
    self->upstream_read = read_size;
    self->relay = Py_NewRef(relay);
    self->feed = Py_NewRef(feed);
    self->read = Py_NewRef(read);
    self->write = Py_NewRef(write);
    self->take = Py_NewRef(take);
    self->seconds = Py_NewRef(seconds);
    if (native)
        self->native = Py_NewRef(session);
    return 0;
}

static PyObject *
Pair_close(Pair *self, PyObject *Py_UNUSED(ignored))
{
    Pair_clear(self);
    Py_RETURN_NONE;
}

static PyObject *
Pair_take(Pair *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *counts = Py_BuildValue("(KKd)", self->client_bytes, self->upstream_bytes, self->last_activity);
    if (counts != NULL) {
        self->client_bytes = self->upstream_bytes = 0;
        self->last_activity = 0.0;
    }
    return counts;
}

static PyObject *
Pair_get_live(Pair *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->relay != NULL);
}

static PyObject *
Pair_get_native(Pair *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->native != NULL);
}

static PyObject *
Pair_get_held(Pair *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->held != NULL ? self->held : Py_None);
}

static int
Pair_set_held(Pair *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->held);
        return 0;
    }
    if (!PyBytes_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "held: bytes or None, not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    if (PyBytes_GET_SIZE(value) == 0) {
        Py_CLEAR(self->held);
        return 0;
    }
    Py_XSETREF(self->held, Py_NewRef(value));
    return 0;
}

static PyMethodDef Pair_methods[] = {
    {"close", (PyCFunction)Pair_close, METH_NOARGS,
     "Forget the relay and the session (the relay is done): never used again."},
    {"take", (PyCFunction)Pair_take, METH_NOARGS,
     "take() -> (client_bytes, upstream_bytes, last_activity): what was relayed here since the last "
     "take, and when the last of it was (0.0: nothing); the counts start again from zero."},
    {NULL},
};

static PyMemberDef Pair_members[] = {
    {"cfd", T_INT, offsetof(Pair, cfd), READONLY, "the client's descriptor"},
    {"ufd", T_INT, offsetof(Pair, ufd), READONLY,
     "the upstream's descriptor (-1: the handshake is the pair's, the upstream not dialled yet)"},
    {"client_steps", T_ULONGLONG, offsetof(Pair, client_steps), READONLY,
     "client segments relayed here whole"},
    {"upstream_steps", T_ULONGLONG, offsetof(Pair, upstream_steps), READONLY,
     "upstream replies relayed here whole"},
    {"departures", T_ULONGLONG, offsetof(Pair, departures), READONLY,
     "events handed to the relay's Python (Relay._left_steady)"},
    {"client_ended", T_INT, offsetof(Pair, client_ended), READONLY,
     "the client's close_notify was passed on upstream here (shut, the client's descriptor watched for nothing)"},
    {"upstream_read", T_PYSSIZET, offsetof(Pair, upstream_read), 0,
     "bytes asked of the upstream per recv (grows for a download, as the relay's _upstream_read)"},
    {"last_activity", T_DOUBLE, offsetof(Pair, last_activity), READONLY,
     "the clock's time of the last bytes relayed here, not yet taken (0.0: none)"},
    {NULL},
};

static PyGetSetDef Pair_getset[] = {
    {"live", (getter)Pair_get_live, NULL, "not closed yet", NULL},
    {"native", (getter)Pair_get_native, NULL,
     "its session is kongacme.tls._openssl's, called through that module's C API", NULL},
    {"held", (getter)Pair_get_held, (setter)Pair_set_held,
     "records held for the client (bytes, or None): sent in one send with the first records to it", NULL},
    {NULL},
};

static PyTypeObject PairType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kongacme.engine._steady.Pair",
    .tp_doc = PyDoc_STR("Pair(relay, cfd, ufd, feed, read, write, take, seconds): "
                        "a relay in the steady state, as dispatch() serves it."),
    .tp_basicsize = sizeof(Pair),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pair_init,
    .tp_dealloc = (destructor)Pair_dealloc,
    .tp_traverse = (traverseproc)Pair_traverse,
    .tp_clear = (inquiry)Pair_clear,
    .tp_methods = Pair_methods,
    .tp_members = Pair_members,
    .tp_getset = Pair_getset,
};

/* -- helpers ------------------------------------------------------------- */

/* The OSError (its errno's subclass, as socket methods raise) for errno `code`. */
static PyObject *
os_error(int code)
{
    return PyObject_CallFunction(PyExc_OSError, "is", code, strerror(code));
}

/* The exception being raised, normalized, with its traceback; cleared. */
static PyObject *
take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

static void
forget(PyObject *steady, int fd)
{
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL) {
        PyErr_Clear();
        return;
    }
    if (PyDict_DelItem(steady, key) < 0)
        PyErr_Clear(); /* not there (KeyError) */
    Py_DECREF(key);
}

/*
 * Leave the steady state: the relay's two descriptors out of `steady`, then
 * Relay._left_steady(what, arg, sent) does what the event needs (and looks
 * at the state again). Steals `arg` (NULL: None). 0, or -1 with an error.
 */
static int
depart(PyObject *steady, Pair *p, int what, PyObject *arg, Py_ssize_t sent)
{
    PyObject *relay = p->relay;
    int status = -1;
    forget(steady, p->cfd);
    forget(steady, p->ufd);
    p->departures++;
    if (arg == NULL)
        arg = Py_NewRef(Py_None);
    if (relay == NULL) { /* closed meanwhile (by a call above) */
        Py_DECREF(arg);
        return 0;
    }
    Py_INCREF(relay);
    PyObject *what_obj = PyLong_FromLong(what);
    PyObject *sent_obj = PyLong_FromSsize_t(sent);
    if (what_obj != NULL && sent_obj != NULL) {
        PyObject *r = PyObject_CallMethodObjArgs(relay, str_left_steady, what_obj, arg, sent_obj, NULL);
        if (r != NULL) {
            Py_DECREF(r);
            status = 0;
        }
    }
    Py_XDECREF(what_obj);
    Py_XDECREF(sent_obj);
    Py_DECREF(arg);
    Py_DECREF(relay);
    return status;
}

/* The relay closed its pair during a call of this step (Pair.close(), from
   Python the step called): the step ends there, the relay having dealt with
   the connection. */
#define CLOSED_MEANWHILE(p) ((p)->relay == NULL)

/* n more bytes relayed one way (*counter), now (the relay's clock). */
static int
count(Pair *p, unsigned long long *counter, Py_ssize_t n)
{
    if (p->seconds == NULL)
        return 0; /* closed meanwhile: nothing to count on */
    *counter += (unsigned long long)n;
    PyObject *now = PyObject_CallNoArgs(p->seconds);
    if (now == NULL)
        return -1;
    double seconds = PyFloat_AsDouble(now);
    Py_DECREF(now);
    if (seconds == -1.0 && PyErr_Occurred())
        return -1;
    p->last_activity = seconds;
    return 0;
}

/* recv() into `into` (at most `size` bytes): the length, 0 at EOF, -1 with errno. */
static Py_ssize_t
receive_into(int fd, char *into, Py_ssize_t size)
{
    ssize_t n;
    do {
        n = recv(fd, into, (size_t)size, 0);
    } while (n < 0 && errno == EINTR);
    return n;
}

/* recv() into a new bytes object of `size`: its length, 0 at EOF, -1 with errno, -2 with an exception. */
static Py_ssize_t
receive(int fd, PyObject **data, Py_ssize_t size)
{
    *data = PyBytes_FromStringAndSize(NULL, size);
    if (*data == NULL)
        return -2;
    Py_ssize_t n = receive_into(fd, PyBytes_AS_STRING(*data), size);
    if (n < 0) {
        int code = errno;
        Py_CLEAR(*data);
        errno = code;
        return -1;
    }
    if (n != size && _PyBytes_Resize(data, n) < 0)
        return -2;
    return n;
}

/* send() of what the socket takes now of `size` bytes at `data`: how much, or -1 with errno. */
static Py_ssize_t
send_buffer(int fd, const char *data, Py_ssize_t size, int flags)
{
    ssize_t n;
    do {
        n = send(fd, data, (size_t)size, MSG_NOSIGNAL | flags);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    return n;
}

/*
 * Call `method(data)`, data: the `size` bytes at `mem`, as a copy when
 * small, else lent as a read-only memoryview for this call only. (A callee
 * that kept the view, which none of the sessions' methods does, would see
 * later bytes in it, never freed memory: the buffers live as long as the
 * process.)
 */
static PyObject *
call_with_bytes(PyObject *method, char *mem, Py_ssize_t size)
{
    PyObject *data = size <= SMALL_COPY ? PyBytes_FromStringAndSize(mem, size)
                                        : PyMemoryView_FromMemory(mem, size, PyBUF_READ);
    if (data == NULL)
        return NULL;
    PyObject *r = PyObject_CallOneArg(method, data);
    Py_DECREF(data);
    return r;
}

/* A socket of the pair failed with errno `code`: `what` (CLIENT_LOST or
   UPSTREAM_LOST) with the OSError socket methods raise for it. */
static int
lost(PyObject *steady, Pair *p, int what, int code)
{
    PyObject *error = os_error(code);
    return error == NULL ? -1 : depart(steady, p, what, error, 0);
}

/* -- the steady state's two steps ------------------------------------------ */

/*
 * `length` bytes at `data` sent on `fd` (the end of a step); a socket error
 * departs as `lost_code`, a short send as `short_code` with the bytes:
 * `owner` (a bytes object holding them, handed on) or else a copy (of a
 * static buffer: rare, the socket's buffer was full).
 */
static int
send_whole(PyObject *steady, Pair *p, int fd, const char *data, Py_ssize_t length, PyObject *owner, int lost_code,
           int short_code, int flags)
{
    Py_ssize_t sent = send_buffer(fd, data, length, flags);
    if (sent < 0)
        return lost(steady, p, lost_code, errno);
    if (sent < length) {
        PyObject *rest = owner != NULL ? Py_NewRef(owner) : PyBytes_FromStringAndSize(data, length);
        return rest == NULL ? -1 : depart(steady, p, short_code, rest, sent);
    }
    return 0;
}

/*
 * `length` bytes of records at `records` to the client (the end of the
 * upstream's step), after the held records if any, in one sendmsg with no
 * copy; the held records are sent (or handed to the relay with what is left
 * of a short send) and forgotten. `owner`: as send_whole's.
 */
static int
send_client(PyObject *steady, Pair *p, const char *records, Py_ssize_t length, PyObject *owner, int short_code,
            int flags)
{
    if (p->held == NULL)
        return send_whole(steady, p, p->cfd, records, length, owner, CLIENT_LOST, short_code, flags);
    PyObject *held = p->held;
    p->held = NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(held);
    struct iovec parts[2] = {
        {.iov_base = PyBytes_AS_STRING(held), .iov_len = (size_t)size},
        {.iov_base = (void *)records, .iov_len = (size_t)length},
    };
    struct msghdr message = {.msg_iov = parts, .msg_iovlen = 2};
    ssize_t sent;
    do {
        sent = sendmsg(p->cfd, &message, MSG_NOSIGNAL | flags);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        sent = 0;
    if (sent < 0) {
        Py_DECREF(held);
        return lost(steady, p, CLIENT_LOST, errno);
    }
    if (sent < size + length) {
        /* Both, as one bytes object, with how much of it went. */
        PyObject *rest = PyBytes_FromStringAndSize(NULL, size + length);
        if (rest == NULL) {
            Py_DECREF(held);
            return -1;
        }
        memcpy(PyBytes_AS_STRING(rest), PyBytes_AS_STRING(held), (size_t)size);
        memcpy(PyBytes_AS_STRING(rest) + size, records, (size_t)length);
        Py_DECREF(held);
        return depart(steady, p, short_code, rest, sent);
    }
    Py_DECREF(held);
    return 0;
}

/* `length` bytes of plaintext at `plaintext` go upstream (the end of the client's step). */
static int
send_upstream(PyObject *steady, Pair *p, Py_ssize_t length)
{
    if (count(p, &p->client_bytes, length) < 0)
        return -1;
    p->client_steps++;
    if (CLOSED_MEANWHILE(p))
        return 0; /* its descriptors may be closed, even reused */
    return send_whole(steady, p, p->ufd, plaintext, length, NULL, UPSTREAM_LOST, UPSTREAM_SHORT, 0);
}

/* The descriptor of the epoll dispatch() serves (for the steps' epoll_ctl). */
static int current_epfd = -1;

/*
 * The client's close_notify in the steady state (the own binding's
 * session): its half-close passed on upstream here, as Relay._client_ended
 * does (RFC 8446 §6.1: the client still reads what the upstream sends),
 * the client watched for nothing more, and the upstream still served here.
 * Where the epoll refuses, the relay's Python does it all instead.
 */
static int
client_end(PyObject *steady, Pair *p)
{
    struct epoll_event nothing = {.events = 0, .data.fd = p->cfd};
    if (current_epfd < 0 || epoll_ctl(current_epfd, EPOLL_CTL_MOD, p->cfd, &nothing) < 0)
        return depart(steady, p, CLIENT_ENDED, NULL, 0);
    (void)shutdown(p->ufd, SHUT_WR); /* as Relay._shut_upstream: an error shows on the next read */
    p->client_ended = 1;
    p->client_steps++;
    return 0;
}

/*
 * The upstream's FIN after the client's close_notify (client_ended): our
 * close_notify to the client, after the held records if any, with MSG_MORE
 * (the FIN follows as the relay closes the socket: one segment for both),
 * then the relay's Python (BOTH_ENDED) releases the connection.
 */
static int
both_ended(PyObject *steady, Pair *p)
{
    const char *records;
    Py_ssize_t length = openssl_api->close_notify(p->native, &records);
    if (length < 0)
        return -1;
    unsigned long long departures = p->departures;
    int rc = send_client(steady, p, records, length, NULL, BOTH_ENDED, MSG_MORE);
    if (rc < 0 || p->departures != departures)
        return rc; /* a short send or a lost client: departed with it */
    return depart(steady, p, BOTH_ENDED, NULL, 0);
}

/* The client's step for the own binding's session: the record (`n` bytes
   in `received`) through OpenSSL with no Python object made. */
static int
client_step_native(PyObject *steady, Pair *p, Py_ssize_t n)
{
    /* A record's plaintext is shorter than the record: n bytes of room. */
    Py_ssize_t length = openssl_api->open_record(p->native, received, n, plaintext, n);
    if (length > 0)
        return send_upstream(steady, p, length);
    if (length == KONGACME_NO_DATA) {
        p->client_steps++; /* a record with no application data in it (a KeyUpdate) */
        return 0;
    }
    if (length == KONGACME_ENDED)
        return client_end(steady, p);
    if (PyErr_ExceptionMatches(tls_error_exc))
        return depart(steady, p, READ_FAILED, take_exception(), 0);
    return -1;
}

/* -- the handshake step (a pair made before the upstream: ufd -1) ---------- */

/* Whether `n` bytes at `data` are whole TLS records, one or more. */
static int
whole_records(const unsigned char *data, Py_ssize_t n)
{
    Py_ssize_t at = 0;
    while (n - at >= 5)
        at += 5 + ((Py_ssize_t)data[at + 3] << 8 | data[at + 4]);
    return at == n && n > 0;
}

/* A non-blocking connect to the pair's upstream: 0 connected (*fd set),
   EINPROGRESS (*fd set), or connect's errno (no descriptor). */
static int
dial(Pair *p, int *fd)
{
    int s = socket(p->upstream.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        return errno;
    /* Each send is a whole record or a whole read (UpstreamSide._dial). */
    int one = 1;
    (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s, (struct sockaddr *)&p->upstream, p->upstream_length) == 0) {
        *fd = s;
        return 0;
    }
    int code = errno;
    if (code != EINPROGRESS && code != EINTR && code != EAGAIN) {
        close(s);
        return code;
    }
    *fd = s;
    /* An upstream on this host: connected before connect() returned. */
    struct sockaddr_storage peer;
    socklen_t length = sizeof peer;
    return getpeername(s, (struct sockaddr *)&peer, &length) == 0 ? 0 : EINPROGRESS;
}

/*
 * After the handshake: the plaintext that came with the client's Finished
 * (the request, usually) goes upstream in one send. It is shorter than the
 * ciphertext of one recv, so it fits in `plaintext`; anything else than
 * records read to the end there (the client's close_notify right behind
 * them, a TLS error, a buffer filled) goes to the relay's Python with what
 * was read (CLIENT_PLAINTEXT), which reads on and meets that again.
 */
static int
relay_plaintext(PyObject *steady, Pair *p)
{
    Py_ssize_t have = 0;
    for (;;) {
        Py_ssize_t length =
            have == read_size ? KONGACME_ENDED
                              : openssl_api->open_record(p->native, NULL, 0, plaintext + have, read_size - have);
        if (length > 0) {
            have += length;
            continue;
        }
        if (length == KONGACME_NO_DATA)
            break;
        if (length == KONGACME_FAILED) {
            if (!PyErr_ExceptionMatches(tls_error_exc))
                return -1;
            PyErr_Clear(); /* read again by the relay's Python */
        }
        PyObject *data = PyBytes_FromStringAndSize(plaintext, have);
        return data == NULL ? -1 : depart(steady, p, CLIENT_PLAINTEXT, data, 0);
    }
    return have == 0 ? 0 : send_upstream(steady, p, have);
}

/*
 * The TLS 1.3 handshake is done here: its session tickets held (Pair.held)
 * for the first records to the client, the upstream dialled, and the relay's
 * Python told (Relay._established(ufd, code)): connected (code 0), the pair
 * serving both sockets from here; still connecting or failed, the pair out
 * of the steady table and the relay's Python on from there.
 */
static int
establish(PyObject *steady, Pair *p)
{
    const char *records;
    Py_ssize_t length = openssl_api->take(p->native, &records);
    if (length < 0)
        return -1;
    if (length > 0) {
        PyObject *held = PyBytes_FromStringAndSize(records, length);
        if (held == NULL)
            return -1;
        Py_XSETREF(p->held, held);
    }
    int ufd = -1;
    int code = dial(p, &ufd);
    if (code == 0) {
        PyObject *key = PyLong_FromLong(ufd);
        if (key == NULL || PyDict_SetItem(steady, key, (PyObject *)p) < 0) {
            Py_XDECREF(key);
            close(ufd);
            return -1;
        }
        Py_DECREF(key);
        p->ufd = ufd;
    } else {
        forget(steady, p->cfd);
    }
    PyObject *relay = Py_NewRef(p->relay);
    PyObject *ufd_obj = PyLong_FromLong(ufd);
    PyObject *code_obj = PyLong_FromLong(code);
    PyObject *r = ufd_obj == NULL || code_obj == NULL
                      ? NULL
                      : PyObject_CallMethodObjArgs(relay, str_established, ufd_obj, code_obj, NULL);
    Py_XDECREF(ufd_obj);
    Py_XDECREF(code_obj);
    Py_DECREF(relay);
    if (r == NULL) {
        if (code == 0 && !CLOSED_MEANWHILE(p)) {
            forget(steady, ufd); /* the relay's abort cannot know it */
            p->ufd = -1;
        }
        return -1;
    }
    Py_DECREF(r);
    if (code != 0 || CLOSED_MEANWHILE(p))
        return 0;
    return relay_plaintext(steady, p);
}

/* What the client sent during the handshake (the pair's, ufd -1): `n` bytes in `received`. */
static int
handshake_step(PyObject *steady, Pair *p, Py_ssize_t n)
{
    if (!whole_records((const unsigned char *)received, n)) {
        /* A FIN, or a record cut across segments: the relay's Python feeds it. */
        PyObject *data = PyBytes_FromStringAndSize(received, n);
        return data == NULL ? -1 : depart(steady, p, CLIENT_DATA, data, 0);
    }
    int done = openssl_api->handshake(p->native, received, n);
    if (done < 0) {
        if (PyErr_ExceptionMatches(tls_error_exc))
            return depart(steady, p, HANDSHAKE_FAILED, take_exception(), 0);
        return -1;
    }
    if (done == 0) {
        const char *records;
        Py_ssize_t length = openssl_api->take(p->native, &records);
        if (length < 0)
            return -1;
        return length == 0 ? 0 : send_whole(steady, p, p->cfd, records, length, NULL, CLIENT_LOST, CLIENT_SHORT, 0);
    }
    if (!openssl_api->is_tls13(p->native))
        return depart(steady, p, HANDSHAKEN, NULL, 0);
    return establish(steady, p);
}

/* The client is readable: one whole record becomes plaintext upstream (or a handshake step). */
static int
client_step(PyObject *steady, Pair *p)
{
    Py_ssize_t n = receive_into(p->cfd, received, read_size);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return lost(steady, p, CLIENT_LOST, errno);
    }
    if (p->ufd < 0)
        return handshake_step(steady, p, n);
    const unsigned char *b = (const unsigned char *)received;
    if (n <= 5 || n != 5 + ((Py_ssize_t)b[3] << 8 | b[4])) {
        PyObject *data = PyBytes_FromStringAndSize(received, n);
        return data == NULL ? -1 : depart(steady, p, CLIENT_DATA, data, 0);
    }
    if (p->native != NULL)
        return client_step_native(steady, p, n);
    PyObject *r = call_with_bytes(p->feed, received, n);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    /* A record's plaintext is shorter than the record: n bytes of room. */
    PyObject *size = PyLong_FromSsize_t(n);
    if (size == NULL)
        return -1;
    if (CLOSED_MEANWHILE(p)) {
        Py_DECREF(size);
        return 0;
    }
    PyObject *args[2] = {size, plaintext_view};
    PyObject *got = PyObject_Vectorcall(p->read, args, 2, NULL);
    Py_DECREF(size);
    if (got == NULL) {
        if (PyErr_ExceptionMatches(want_read_exc)) {
            PyErr_Clear(); /* a record with no application data in it (a KeyUpdate) */
            p->client_steps++;
            return 0;
        }
        if (PyErr_ExceptionMatches(closed_exc)) {
            PyErr_Clear();
            return depart(steady, p, CLIENT_ENDED, NULL, 0);
        }
        if (PyErr_ExceptionMatches(tls_error_exc))
            return depart(steady, p, READ_FAILED, take_exception(), 0);
        return -1;
    }
    Py_ssize_t length = PyLong_AsSsize_t(got);
    Py_DECREF(got);
    if (length < 0 || length > n) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "read into a buffer of %zd gave %zd", n, length);
        return -1;
    }
    if (length == 0)
        return depart(steady, p, CLIENT_ENDED, NULL, 0);
    return send_upstream(steady, p, length);
}

/* The upstream is readable: its bytes become records to the client. */
static int
upstream_step(PyObject *steady, Pair *p)
{
    Py_ssize_t asked = p->upstream_read > 0 ? p->upstream_read : read_size;
    /* The usual size into the static buffer; a bulk read into a bytes
       object of its own (a copy of 256 KiB would cost more than the
       allocation it saves). */
    PyObject *data = NULL;
    Py_ssize_t n = asked <= read_size ? receive_into(p->ufd, received, asked) : receive(p->ufd, &data, asked);
    if (n == -2)
        return -1;
    if (n == -1) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return lost(steady, p, UPSTREAM_LOST, errno);
    }
    if (n == 0) {
        Py_XDECREF(data);
        if (p->client_ended && p->native != NULL)
            return both_ended(steady, p);
        return depart(steady, p, UPSTREAM_ENDED, NULL, 0);
    }
    /* A full read is a bulk transfer: read more at a time; a short one,
       back to the small size (as UpstreamSide._read_upstream). */
    p->upstream_read = n == asked ? bulk_read_size : read_size;
    if (count(p, &p->upstream_bytes, n) < 0) {
        Py_XDECREF(data);
        return -1;
    }
    if (CLOSED_MEANWHILE(p)) {
        Py_XDECREF(data);
        return 0;
    }
    if (p->native != NULL) {
        const char *records;
        Py_ssize_t length = openssl_api->seal(p->native, data == NULL ? received : PyBytes_AS_STRING(data), n,
                                              &records);
        Py_XDECREF(data);
        if (length < 0) {
            if (PyErr_ExceptionMatches(tls_error_exc))
                return depart(steady, p, CLIENT_LOST, take_exception(), 0);
            return -1;
        }
        p->upstream_steps++;
        return length == 0 ? 0 : send_client(steady, p, records, length, NULL, CLIENT_SHORT, 0);
    }
    PyObject *r;
    if (data == NULL) {
        r = call_with_bytes(p->write, received, n);
    } else {
        r = PyObject_CallOneArg(p->write, data);
        Py_DECREF(data);
    }
    if (r == NULL) {
        if (PyErr_ExceptionMatches(tls_error_exc))
            return depart(steady, p, CLIENT_LOST, take_exception(), 0);
        return -1;
    }
    Py_DECREF(r);
    if (CLOSED_MEANWHILE(p))
        return 0;
    PyObject *records = PyObject_CallNoArgs(p->take);
    if (records == NULL)
        return -1;
    if (!PyBytes_Check(records)) {
        PyErr_Format(PyExc_TypeError, "take gave %.100s, not bytes", Py_TYPE(records)->tp_name);
        Py_DECREF(records);
        return -1;
    }
    p->upstream_steps++;
    Py_ssize_t length = PyBytes_GET_SIZE(records);
    if (length == 0) {
        Py_DECREF(records);
        return 0;
    }
    if (CLOSED_MEANWHILE(p)) {
        Py_DECREF(records);
        return 0; /* its descriptors may be closed, even reused */
    }
    int rc = send_client(steady, p, PyBytes_AS_STRING(records), length, records, CLIENT_SHORT, 0);
    Py_DECREF(records);
    return rc;
}

/* -- dispatch ------------------------------------------------------------ */

static PyObject *
configure(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *want_read, *closed, *tls_error;
    Py_ssize_t small, bulk;
    if (!PyArg_ParseTuple(args, "OOOnn:configure", &want_read, &closed, &tls_error, &small, &bulk))
        return NULL;
    if (small <= 5 || bulk < small) {
        PyErr_SetString(PyExc_ValueError, "configure: read sizes must be > 5, bulk >= small");
        return NULL;
    }
    if (small != read_size || received == NULL) {
        char *in = PyMem_RawRealloc(received, (size_t)small);
        if (in == NULL)
            return PyErr_NoMemory();
        received = in;
        char *out = PyMem_RawRealloc(plaintext, (size_t)small);
        if (out == NULL)
            return PyErr_NoMemory();
        plaintext = out;
        Py_XSETREF(plaintext_view, PyMemoryView_FromMemory(plaintext, small, PyBUF_WRITE));
        if (plaintext_view == NULL)
            return NULL;
    }
    if (openssl_api == NULL) {
        const KongacmeOpenSSL_API *api = PyCapsule_Import(KONGACME_OPENSSL_CAPSULE, 0);
        if (api == NULL)
            PyErr_Clear();
        else if (api->version == KONGACME_OPENSSL_API_VERSION)
            openssl_api = api;
    }
    Py_XSETREF(want_read_exc, Py_NewRef(want_read));
    Py_XSETREF(closed_exc, Py_NewRef(closed));
    Py_XSETREF(tls_error_exc, Py_NewRef(tls_error));
    read_size = small;
    bulk_read_size = bulk;
    Py_RETURN_NONE;
}

/*
 * One event for `handler` failed with the current exception: an Exception
 * goes to failed(handler, fd, exception) (which logs it and ends that
 * connection only); anything else (KeyboardInterrupt, SystemExit) stays
 * raised: -1.
 */
static int
handle_failure(PyObject *failed, PyObject *handler, PyObject *key)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *error = take_exception();
    if (error == NULL)
        return -1;
    PyObject *r = PyObject_CallFunctionObjArgs(failed, handler != NULL ? handler : Py_None, key, error, NULL);
    Py_DECREF(error);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* One epoll_wait (no wait) and its events served: how many, or -1 with an exception set. */
static int
dispatch_once(int epfd, int maxevents, PyObject *handlers, PyObject *steady, PyObject *failed)
{
    struct epoll_event events[MAX_EVENTS];
    int ready = epoll_wait(epfd, events, maxevents, 0);
    if (ready < 0) {
        if (errno == EINTR)
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (int i = 0; i < ready; i++) {
        int fd = events[i].data.fd;
        uint32_t mask = events[i].events;
        PyObject *key = PyLong_FromLong(fd);
        if (key == NULL)
            return -1;
        PyObject *handler = NULL;
        int rc = 0;
        /* EPOLLHUP with EPOLLIN: both directions of a socket shut, which on
           the upstream of a client that ended (client_ended) is its FIN. */
        if (mask == EPOLLIN || mask == (EPOLLIN | EPOLLHUP)) {
            Pair *p = (Pair *)PyDict_GetItemWithError(steady, key); /* borrowed */
            if (p == NULL && PyErr_Occurred()) {
                Py_DECREF(key);
                return -1;
            }
            if (p != NULL && Py_IS_TYPE(p, &PairType) && p->relay != NULL &&
                (mask == EPOLLIN ? fd == p->ufd || (fd == p->cfd && !p->client_ended)
                                 : fd == p->ufd && p->client_ended)) {
                Py_INCREF(p);
                handler = Py_NewRef(p->relay);
                rc = fd == p->cfd ? client_step(steady, p) : upstream_step(steady, p);
                Py_DECREF(p);
                goto done;
            }
            if (p != NULL && mask == EPOLLIN)
                forget(steady, fd); /* a stale entry: never served */
        }
        handler = PyDict_GetItemWithError(handlers, key);
        if (handler == NULL) {
            Py_DECREF(key);
            if (PyErr_Occurred())
                return -1;
            continue; /* closed earlier in this batch */
        }
        Py_INCREF(handler);
        PyObject *mask_obj = PyLong_FromUnsignedLong(mask);
        if (mask_obj == NULL) {
            rc = -1;
        } else {
            PyObject *r = PyObject_CallMethodObjArgs(handler, str_on_events, key, mask_obj, NULL);
            Py_DECREF(mask_obj);
            if (r == NULL)
                rc = -1;
            else
                Py_DECREF(r);
        }
    done:
        if (rc < 0 && handle_failure(failed, handler, key) < 0) {
            Py_XDECREF(handler);
            Py_DECREF(key);
            return -1;
        }
        Py_XDECREF(handler);
        Py_DECREF(key);
    }
    return ready;
}

static PyObject *
dispatch(PyObject *Py_UNUSED(module), PyObject *args)
{
    int epfd, maxevents, rounds = 1;
    PyObject *handlers, *steady, *failed;
    if (!PyArg_ParseTuple(args, "iO!O!iO|i:dispatch", &epfd, &PyDict_Type, &handlers, &PyDict_Type, &steady,
                          &maxevents, &failed, &rounds))
        return NULL;
    if (want_read_exc == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dispatch before configure");
        return NULL;
    }
    if (maxevents < 1 || maxevents > MAX_EVENTS)
        maxevents = MAX_EVENTS;
    /* Poll again while the last poll found something, up to `rounds` polls:
       under load the reactor's iteration (its timers, its own epoll, its
       log context) is then paid once per several batches. */
    long served = 0;
    current_epfd = epfd;
    for (int round = 0; round < rounds; round++) {
        int ready = dispatch_once(epfd, maxevents, handlers, steady, failed);
        if (ready < 0) {
            current_epfd = -1;
            return NULL;
        }
        served += ready;
        if (ready == 0)
            break;
    }
    current_epfd = -1;
    return PyLong_FromLong(served);
}

/* A peer's address as the socket module gives it (inet_ntop, as its makesockaddr): (host, port), or
   (host, port, flowinfo, scope_id) for IPv6. */
static PyObject *
socket_address(const struct sockaddr_storage *address)
{
    char host[INET6_ADDRSTRLEN];
    if (address->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(sHkI)", host, ntohs(in6->sin6_port), (unsigned long)ntohl(in6->sin6_flowinfo),
                             (unsigned int)in6->sin6_scope_id);
    }
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)address;
        if (inet_ntop(AF_INET, &in->sin_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(sH)", host, ntohs(in->sin_port));
    }
    PyErr_Format(PyExc_OSError, "accept: a peer of address family %d", address->ss_family);
    return NULL;
}

static PyObject *
accept_connection(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long value = PyLong_AsLong(arg);
    if (value == -1 && PyErr_Occurred())
        return NULL;
    if (value < 0 || value > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "accept: not a descriptor");
        return NULL;
    }
    int fd = (int)value;
    struct sockaddr_storage address;
    socklen_t length;
    int accepted;
    do {
        length = sizeof address;
        accepted = accept4(fd, (struct sockaddr *)&address, &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (accepted < 0 && errno == EINTR);
    if (accepted < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *peer = socket_address(&address);
    if (peer == NULL) {
        close(accepted);
        return NULL;
    }
    return Py_BuildValue("(iN)", accepted, peer);
}

static PyMethodDef module_methods[] = {
    {"accept", accept_connection, METH_O,
     "accept(fd) -> (fd, address) or None: a connection from listening socket `fd` (non-blocking, "
     "close-on-exec: accept4), its peer's address as the socket module gives it; None when there is none "
     "now; OSError (of the errno's subclass) as socket.accept raises."},
    {"configure", configure, METH_VARARGS,
     "configure(want_read, closed, tls_error, read_size, bulk_read_size): the exception classes "
     "(tuples) of the sessions' read, and the relay's read sizes."},
    {"dispatch", dispatch, METH_VARARGS,
     "dispatch(epfd, handlers, steady, max_events, failed, rounds=1) -> events: serve what the epoll "
     "`epfd` has ready now (no wait), polling again while events come, up to `rounds` polls."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kongacme.engine._steady",
    .m_doc = PyDoc_STR("The lean engine's dispatch and the relay's steady state, compiled."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__steady(void)
{
    if (PyType_Ready(&PairType) < 0)
        return NULL;
#define INTERN(var, text)                                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                          \
        return NULL;
    INTERN(str_on_events, "on_events");
    INTERN(str_left_steady, "_left_steady");
    INTERN(str_established, "_established");
#undef INTERN
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Pair", (PyObject *)&PairType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    static const struct {
        const char *name;
        int value;
    } codes[] = {
        {"CLIENT_DATA", CLIENT_DATA},     {"CLIENT_LOST", CLIENT_LOST},
        {"CLIENT_ENDED", CLIENT_ENDED},   {"READ_FAILED", READ_FAILED},
        {"UPSTREAM_LOST", UPSTREAM_LOST}, {"UPSTREAM_SHORT", UPSTREAM_SHORT},
        {"UPSTREAM_ENDED", UPSTREAM_ENDED}, {"CLIENT_SHORT", CLIENT_SHORT},
        {"BOTH_ENDED", BOTH_ENDED},       {"HANDSHAKE_FAILED", HANDSHAKE_FAILED},
        {"HANDSHAKEN", HANDSHAKEN},       {"CLIENT_PLAINTEXT", CLIENT_PLAINTEXT},
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        if (PyModule_AddIntConstant(m, codes[i].name, codes[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
