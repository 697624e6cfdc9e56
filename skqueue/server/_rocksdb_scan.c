/* skqueue.server._rocksdb: SEEK and SCAN, each ONE call whose whole iteration (the seek,
 * the steps, the copying of keys and values into C buffers) runs without the GIL; the
 * Python objects are built after it is taken back.  See _rocksdb.c for the design. */
#include "_rocksdb.h"

/* ------------------------------------------------------------------ seek and scan */

typedef struct {
    long long count;  /* values read, the first one included */
    char *first;      /* copy of the first value (seek mode) */
    size_t first_len;
    char *buf;        /* scan mode: records [size_t klen][size_t vlen][key][value] ...;
                         seek mode: scratch the scanned values are copied into */
    size_t len, cap;
    char *err;        /* RocksDB status (malloc'd by RocksDB) */
    int oom;
} scan_t;

static int
scan_reserve(scan_t *s, size_t more)
{
    size_t cap;
    char *p;
    if (s->len + more <= s->cap)
        return 0;
    cap = s->cap ? s->cap : 4096;
    while (cap < s->len + more)
        cap *= 2;
    p = (char *)realloc(s->buf, cap);
    if (p == NULL) {
        s->oom = 1;
        return -1;
    }
    s->buf = p;
    s->cap = cap;
    return 0;
}

/* Runs without the GIL.  collect = 0: SEEK of the RPC protocol -- copy the first value out,
 * then step and copy up to `n` more values into scratch (read, as the paper's server does).
 * collect = 1: keep up to n + 1 (key, value) records. */
static void
scan_run(DBObject *self, const char *key, size_t klen, long long n, int collect, scan_t *s)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator(self->db, self->ropts);
    long long i;
    for (i = 0, rocksdb_iter_seek(it, key, klen); rocksdb_iter_valid(it);
         i++, rocksdb_iter_next(it)) {
        size_t vlen, kl = 0;
        const char *v = rocksdb_iter_value(it, &vlen);
        if (collect) {
            const char *k = rocksdb_iter_key(it, &kl);
            if (scan_reserve(s, 2 * sizeof(size_t) + kl + vlen) < 0)
                break;
            memcpy(s->buf + s->len, &kl, sizeof(size_t));
            memcpy(s->buf + s->len + sizeof(size_t), &vlen, sizeof(size_t));
            memcpy(s->buf + s->len + 2 * sizeof(size_t), k, kl);
            memcpy(s->buf + s->len + 2 * sizeof(size_t) + kl, v, vlen);
            s->len += 2 * sizeof(size_t) + kl + vlen;
        } else if (i == 0) {
            s->first = (char *)malloc(vlen ? vlen : 1);
            if (s->first == NULL) {
                s->oom = 1;
                break;
            }
            memcpy(s->first, v, vlen);
            s->first_len = vlen;
        } else {
            s->len = 0;
            if (scan_reserve(s, vlen) < 0)
                break;
            memcpy(s->buf, v, vlen);
            __asm__ volatile("" : : "r"(s->buf) : "memory"); /* the copy is the work */
        }
        s->count++;
        if (i >= n)
            break;
    }
    if (!s->oom)
        rocksdb_iter_get_error(it, &s->err);
    rocksdb_iter_destroy(it);
}

static int
seek_args(PyObject *const *args, Py_ssize_t nargs, const char *name, Py_buffer *key,
          long long *n)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)", name, nargs);
        return -1;
    }
    *n = PyLong_AsLongLong(args[1]);
    if (*n == -1 && PyErr_Occurred())
        return -1;
    return PyObject_GetBuffer(args[0], key, PyBUF_SIMPLE);
}

/* The common part of seek() and scan(): the whole scan as one call without the GIL. */
static int
scan_call(DBObject *self, Py_buffer *key, long long n, int collect, scan_t *s)
{
    if (db_enter(self) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    scan_run(self, key->buf, (size_t)key->len, n, collect, s);
    Py_END_ALLOW_THREADS
    db_leave(self);
    if (s->err != NULL) {
        raise_status(self, self->error, self->path, collect ? "scan" : "seek", s->err);
        s->err = NULL;
        return -1;
    }
    if (s->oom) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

const char db_seek_doc[] =
"seek(key, n) -> (count, first_value | None)\n\n"
"Position on the first key >= key, copy its value, then step and read up to n more values\n"
"(n < 0 counts as 0), all in one call without the GIL.  count is the number of values read,\n"
"the first included (0 when no key is at or after key).";

PyObject *
db_seek(DBObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer key;
    long long n;
    scan_t s;
    PyObject *first, *res = NULL;

    memset(&s, 0, sizeof(s));
    if (seek_args(args, nargs, "seek", &key, &n) < 0)
        return NULL;
    if (n < 0)
        n = 0;
    if (scan_call(self, &key, n, 0, &s) == 0) {
        if (s.first == NULL) {
            res = Py_BuildValue("(LO)", s.count, Py_None);
        } else {
            first = PyBytes_FromStringAndSize(s.first, (Py_ssize_t)s.first_len);
            if (first != NULL)
                res = Py_BuildValue("(LN)", s.count, first);
        }
    }
    PyBuffer_Release(&key);
    free(s.first);
    free(s.buf);
    return res;
}

const char db_scan_doc[] =
"scan(key, limit) -> list[tuple[bytes, bytes]]\n\n"
"Up to limit (key, value) pairs from the first key >= key on, in key order; the reading\n"
"runs in one call without the GIL, the list is built afterwards.";

PyObject *
db_scan(DBObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer key;
    long long limit;
    scan_t s;
    PyObject *list = NULL;
    size_t off = 0;

    memset(&s, 0, sizeof(s));
    if (seek_args(args, nargs, "scan", &key, &limit) < 0)
        return NULL;
    if (limit <= 0) {
        PyBuffer_Release(&key);
        return PyList_New(0);
    }
    if (scan_call(self, &key, limit - 1, 1, &s) < 0)
        goto done;
    list = PyList_New(0);
    while (list != NULL && off < s.len) {
        size_t kl, vl;
        PyObject *item;
        memcpy(&kl, s.buf + off, sizeof(size_t));
        memcpy(&vl, s.buf + off + sizeof(size_t), sizeof(size_t));
        off += 2 * sizeof(size_t);
        item = Py_BuildValue("(y#y#)", s.buf + off, (Py_ssize_t)kl, s.buf + off + kl,
                             (Py_ssize_t)vl);
        off += kl + vl;
        if (item == NULL || PyList_Append(list, item) < 0)
            Py_CLEAR(list);
        Py_XDECREF(item);
    }
done:
    PyBuffer_Release(&key);
    free(s.buf);
    return list;
}
