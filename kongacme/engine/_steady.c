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
 * Nothing here reaches into Python's, OpenSSL's or Twisted's internals: the
 * TLS objects are called through their public Python methods, and the
 * sockets are the kernel's. One process, one thread: the engine runs on
 * the reactor's thread with the GIL held (no wait, so it is never released).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

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
};

#define MAX_EVENTS 256

/* Set by configure(): the exception classes (tuples) and read sizes. */
static PyObject *want_read_exc = NULL;
static PyObject *closed_exc = NULL;
static PyObject *tls_error_exc = NULL;
static Py_ssize_t read_size = 1 << 16;
static Py_ssize_t bulk_read_size = 1 << 18;

static PyObject *str_on_events, *str_left_steady, *str_from_client, *str_from_upstream,
    *str_last_activity, *str_upstream_read;

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
    unsigned long long client_steps;
    unsigned long long upstream_steps;
    unsigned long long departures;
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
    return 0;
}

static void
Pair_dealloc(Pair *self)
{
    PyObject_GC_UnTrack(self);
    Pair_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Pair_init(Pair *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"relay", "cfd", "ufd", "feed", "read", "write", "take", "seconds", NULL};
    PyObject *relay, *feed, *read, *write, *take, *seconds;
    int cfd, ufd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiiOOOOO:Pair", kwlist, &relay, &cfd, &ufd, &feed,
                                     &read, &write, &take, &seconds))
        return -1;
    if (cfd < 0 || ufd < 0) {
        PyErr_SetString(PyExc_ValueError, "Pair: descriptors must not be negative");
        return -1;
    }
    Pair_clear(self);
    self->cfd = cfd;
    self->ufd = ufd;
    self->relay = Py_NewRef(relay);
    self->feed = Py_NewRef(feed);
    self->read = Py_NewRef(read);
    self->write = Py_NewRef(write);
    self->take = Py_NewRef(take);
    self->seconds = Py_NewRef(seconds);
    return 0;
}

static PyObject *
Pair_close(Pair *self, PyObject *Py_UNUSED(ignored))
{
    Pair_clear(self);
    Py_RETURN_NONE;
}

static PyObject *
Pair_get_live(Pair *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->relay != NULL);
}

static PyMethodDef Pair_methods[] = {
    {"close", (PyCFunction)Pair_close, METH_NOARGS,
     "Forget the relay and the session (the relay is done): never used again."},
    {NULL},
};

static PyMemberDef Pair_members[] = {
    {"cfd", T_INT, offsetof(Pair, cfd), READONLY, "the client's descriptor"},
    {"ufd", T_INT, offsetof(Pair, ufd), READONLY, "the upstream's descriptor"},
    {"client_steps", T_ULONGLONG, offsetof(Pair, client_steps), READONLY,
     "client segments relayed here whole"},
    {"upstream_steps", T_ULONGLONG, offsetof(Pair, upstream_steps), READONLY,
     "upstream replies relayed here whole"},
    {"departures", T_ULONGLONG, offsetof(Pair, departures), READONLY,
     "events handed to the relay's Python (Relay._left_steady)"},
    {NULL},
};

static PyGetSetDef Pair_getset[] = {
    {"live", (getter)Pair_get_live, NULL, "not closed yet", NULL},
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

/* relay.<name> += n, and relay._last_activity = seconds(). */
static int
count(Pair *p, PyObject *name, Py_ssize_t n)
{
    PyObject *relay = p->relay;
    if (relay == NULL)
        return 0; /* closed meanwhile: nothing to count on */
    PyObject *old = PyObject_GetAttr(relay, name);
    if (old == NULL)
        return -1;
    PyObject *add = PyLong_FromSsize_t(n);
    if (add == NULL) {
        Py_DECREF(old);
        return -1;
    }
    PyObject *sum = PyNumber_Add(old, add);
    Py_DECREF(old);
    Py_DECREF(add);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(relay, name, sum);
    Py_DECREF(sum);
    if (rc < 0)
        return -1;
    PyObject *now = PyObject_CallNoArgs(p->seconds);
    if (now == NULL)
        return -1;
    rc = PyObject_SetAttr(relay, str_last_activity, now);
    Py_DECREF(now);
    return rc;
}

/* recv() into a new bytes object of `size`: its length, 0 at EOF, -1 with errno. */
static Py_ssize_t
receive(int fd, PyObject **data, Py_ssize_t size)
{
    *data = PyBytes_FromStringAndSize(NULL, size);
    if (*data == NULL)
        return -2;
    ssize_t n;
    do {
        n = recv(fd, PyBytes_AS_STRING(*data), (size_t)size, 0);
    } while (n < 0 && errno == EINTR);
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

/* send() of all of `data` that the socket takes now: how much, or -1 with errno. */
static Py_ssize_t
send_some(int fd, PyObject *data)
{
    ssize_t n;
    do {
        n = send(fd, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data), MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    return n;
}

/* -- the steady state's two steps ------------------------------------------ */

/* The client is readable: one whole record becomes plaintext upstream. */
static int
client_step(PyObject *steady, Pair *p)
{
    PyObject *data;
    Py_ssize_t n = receive(p->cfd, &data, read_size);
    if (n == -2)
        return -1;
    if (n == -1) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        PyObject *error = os_error(errno);
        return error == NULL ? -1 : depart(steady, p, CLIENT_LOST, error, 0);
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(data);
    if (n <= 5 || n != 5 + ((Py_ssize_t)b[3] << 8 | b[4]))
        return depart(steady, p, CLIENT_DATA, data, 0);
    PyObject *r = PyObject_CallOneArg(p->feed, data);
    Py_DECREF(data);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    /* A record's plaintext is shorter than the record. */
    PyObject *size = PyLong_FromSsize_t(n);
    if (size == NULL)
        return -1;
    PyObject *plain = PyObject_CallOneArg(p->read, size);
    Py_DECREF(size);
    if (plain == NULL) {
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
    if (!PyBytes_Check(plain)) {
        PyErr_Format(PyExc_TypeError, "read gave %.100s, not bytes", Py_TYPE(plain)->tp_name);
        Py_DECREF(plain);
        return -1;
    }
    Py_ssize_t length = PyBytes_GET_SIZE(plain);
    if (length == 0) {
        Py_DECREF(plain);
        return depart(steady, p, CLIENT_ENDED, NULL, 0);
    }
    if (count(p, str_from_client, length) < 0) {
        Py_DECREF(plain);
        return -1;
    }
    p->client_steps++;
    Py_ssize_t sent = send_some(p->ufd, plain);
    if (sent < 0) {
        Py_DECREF(plain);
        PyObject *error = os_error(errno);
        return error == NULL ? -1 : depart(steady, p, UPSTREAM_LOST, error, 0);
    }
    if (sent < length)
        return depart(steady, p, UPSTREAM_SHORT, plain, sent);
    Py_DECREF(plain);
    return 0;
}

/* The upstream is readable: its bytes become records to the client. */
static int
upstream_step(PyObject *steady, Pair *p)
{
    PyObject *relay = p->relay;
    PyObject *asked_obj = PyObject_GetAttr(relay, str_upstream_read);
    if (asked_obj == NULL)
        return -1;
    Py_ssize_t asked = PyLong_AsSsize_t(asked_obj);
    Py_DECREF(asked_obj);
    if (asked <= 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "_upstream_read must be positive");
        return -1;
    }
    PyObject *data;
    Py_ssize_t n = receive(p->ufd, &data, asked);
    if (n == -2)
        return -1;
    if (n == -1) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        PyObject *error = os_error(errno);
        return error == NULL ? -1 : depart(steady, p, UPSTREAM_LOST, error, 0);
    }
    if (n == 0) {
        Py_DECREF(data);
        return depart(steady, p, UPSTREAM_ENDED, NULL, 0);
    }
    /* A full read is a bulk transfer: read more at a time; a short one,
       back to the small size (as UpstreamSide._read_upstream). */
    Py_ssize_t next = n == asked ? bulk_read_size : read_size;
    if (next != asked) {
        PyObject *v = PyLong_FromSsize_t(next);
        if (v == NULL || PyObject_SetAttr(relay, str_upstream_read, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(data);
            return -1;
        }
        Py_DECREF(v);
    }
    if (count(p, str_from_upstream, n) < 0) {
        Py_DECREF(data);
        return -1;
    }
    PyObject *r = PyObject_CallOneArg(p->write, data);
    Py_DECREF(data);
    if (r == NULL) {
        if (PyErr_ExceptionMatches(tls_error_exc))
            return depart(steady, p, CLIENT_LOST, take_exception(), 0);
        return -1;
    }
    Py_DECREF(r);
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
    Py_ssize_t sent = send_some(p->cfd, records);
    if (sent < 0) {
        Py_DECREF(records);
        PyObject *error = os_error(errno);
        return error == NULL ? -1 : depart(steady, p, CLIENT_LOST, error, 0);
    }
    if (sent < length)
        return depart(steady, p, CLIENT_SHORT, records, sent);
    Py_DECREF(records);
    return 0;
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

static PyObject *
dispatch(PyObject *Py_UNUSED(module), PyObject *args)
{
    int epfd, maxevents;
    PyObject *handlers, *steady, *failed;
    if (!PyArg_ParseTuple(args, "iO!O!iO:dispatch", &epfd, &PyDict_Type, &handlers, &PyDict_Type, &steady,
                          &maxevents, &failed))
        return NULL;
    if (want_read_exc == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dispatch before configure");
        return NULL;
    }
    if (maxevents < 1 || maxevents > MAX_EVENTS)
        maxevents = MAX_EVENTS;
    struct epoll_event events[MAX_EVENTS];
    int ready = epoll_wait(epfd, events, maxevents, 0);
    if (ready < 0) {
        if (errno == EINTR)
            return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (int i = 0; i < ready; i++) {
        int fd = events[i].data.fd;
        uint32_t mask = events[i].events;
        PyObject *key = PyLong_FromLong(fd);
        if (key == NULL)
            return NULL;
        PyObject *handler = NULL;
        int rc = 0;
        if (mask == EPOLLIN) {
            Pair *p = (Pair *)PyDict_GetItemWithError(steady, key); /* borrowed */
            if (p == NULL && PyErr_Occurred()) {
                Py_DECREF(key);
                return NULL;
            }
            if (p != NULL && Py_IS_TYPE(p, &PairType) && p->relay != NULL && (fd == p->cfd || fd == p->ufd)) {
                Py_INCREF(p);
                handler = Py_NewRef(p->relay);
                rc = fd == p->cfd ? client_step(steady, p) : upstream_step(steady, p);
                Py_DECREF(p);
                goto done;
            }
            if (p != NULL)
                forget(steady, fd); /* a stale entry: never served */
        }
        handler = PyDict_GetItemWithError(handlers, key);
        if (handler == NULL) {
            Py_DECREF(key);
            if (PyErr_Occurred())
                return NULL;
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
            return NULL;
        }
        Py_XDECREF(handler);
        Py_DECREF(key);
    }
    return PyLong_FromLong(ready);
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(want_read, closed, tls_error, read_size, bulk_read_size): the exception classes "
     "(tuples) of the sessions' read, and the relay's read sizes."},
    {"dispatch", dispatch, METH_VARARGS,
     "dispatch(epfd, handlers, steady, max_events, failed) -> events: serve what the epoll `epfd` "
     "has ready now (no wait)."},
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
    INTERN(str_from_client, "received_from_client");
    INTERN(str_from_upstream, "received_from_upstream");
    INTERN(str_last_activity, "_last_activity");
    INTERN(str_upstream_read, "_upstream_read");
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
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        if (PyModule_AddIntConstant(m, codes[i].name, codes[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
