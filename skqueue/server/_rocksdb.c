/* skqueue.server._rocksdb: RocksDB through its C API (rocksdb/c.h) for the RPC KV store.
 *
 * Optional: setup.py builds it only when the RocksDB headers are installed (Debian's
 * librocksdb-dev); skqueue.server.kv falls back to rocksdict without it.
 *
 * Why it exists: rocksdict holds the GIL in every iterator step, so one long SEEK stalls
 * every other thread of the server.  Here a whole SEEK (the seek, the N-step scan and the
 * copying of the values into C buffers) runs as ONE call with the GIL released; the Python
 * objects are built after the GIL is taken back.  Point get/put keep the GIL by default: they
 * take a few microseconds, and taking the GIL back after releasing it can wait up to the
 * switch interval (``point_nogil=True`` releases it there too, for measuring that choice).
 *
 * Threads: one DB handle is shared by all the server's threads (RocksDB is internally
 * thread-safe).  The handle's own state -- the database pointer, the count of calls in
 * progress, the closing flag -- is guarded by a pthread mutex, never by the GIL, so the
 * module is correct on a free-threaded build (it declares Py_MOD_GIL_NOT_USED there).  Every
 * call holds a use count for its whole duration; close() marks the handle closing (new calls
 * are refused with KVClosedError), waits without the GIL until the calls in progress have
 * finished, then closes the database.  A call can thus never run on a closed database.
 *
 * Errors are skqueue.server.kverrors.KVError / KVClosedError (imported when the module is
 * loaded), with RocksDB's status text and, for the usual causes, what to do about them.
 */
#include "_rocksdb.h"

static struct PyModuleDef module_def;

/* ------------------------------------------------------------------ errors */

/* A RocksDB status string -> KVError naming the operation and the likely cause.  Frees err. */
PyObject *
raise_status(DBObject *self, PyObject *error, PyObject *path, const char *what, char *err)
{
    const char *hint = "";
    if (strstr(err, "format_version") != NULL || strstr(err, "Unknown Footer") != NULL ||
        strstr(err, "newer version") != NULL || strstr(err, "Unsupported") != NULL ||
        strstr(err, "unsupported") != NULL) {
        hint = " (the database was probably written by a newer RocksDB than this one, "
               SKQ_ROCKSDB_VERSION "; open it with the library that wrote it, e.g. "
               "rocksdict, or recreate it)";
    } else if (strstr(err, "LOCK") != NULL || strstr(err, "lock file") != NULL) {
        hint = " (another process, or another handle in this one, has the database open)";
    } else if (strstr(err, "create_if_missing is false") != NULL) {
        hint = " (no database there: create it, or pass create_if_missing=True)";
    }
    (void)self;
    PyErr_Format(error, "RocksDB %s of %R failed: %s%s", what, path, err, hint);
    rocksdb_free(err);
    return NULL;
}

/* ------------------------------------------------------------------ use count */

int
db_enter(DBObject *self)
{
    int closing;
    pthread_mutex_lock(&self->mu);
    if (self->db != NULL && !self->closing) {
        self->users++;
        pthread_mutex_unlock(&self->mu);
        return 0;
    }
    closing = self->closing;
    pthread_mutex_unlock(&self->mu);
    PyErr_Format(self->closed_error,
                 closing ? "RocksDB database %R is being closed by another thread"
                         : "RocksDB database %R is closed",
                 self->path);
    return -1;
}

void
db_leave(DBObject *self)
{
    pthread_mutex_lock(&self->mu);
    if (--self->users == 0 && self->closing)
        pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

/* Frees everything but the mutex; the caller has made sure nobody uses the handle. */
#define FREE_FIELD(field, destroy)    \
    do {                              \
        if (self->field != NULL) {    \
            destroy(self->field);     \
            self->field = NULL;       \
        }                             \
    } while (0)

static void
db_free_handles(DBObject *self)
{
    FREE_FIELD(db, rocksdb_close); /* first: it may still use the options and the cache */
    FREE_FIELD(ropts, rocksdb_readoptions_destroy);
    FREE_FIELD(wopts, rocksdb_writeoptions_destroy);
    FREE_FIELD(fopts, rocksdb_flushoptions_destroy);
    FREE_FIELD(opts, rocksdb_options_destroy);
    FREE_FIELD(table, rocksdb_block_based_options_destroy);
    FREE_FIELD(cache, rocksdb_cache_destroy);
}

/* ------------------------------------------------------------------ open */

static const struct {
    const char *name;
    int code;
} compressions[] = {
    {"none", rocksdb_no_compression},   {"snappy", rocksdb_snappy_compression},
    {"zlib", rocksdb_zlib_compression}, {"bz2", rocksdb_bz2_compression},
    {"lz4", rocksdb_lz4_compression},   {"lz4hc", rocksdb_lz4hc_compression},
    {"zstd", rocksdb_zstd_compression}, {NULL, 0},
};

static PyObject *
db_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "create_if_missing", "block_cache_bytes",
                             "write_buffer_bytes", "parallelism", "direct_io", "compression",
                             "point_nogil", NULL};
    PyObject *path_obj, *path_bytes = NULL;
    int create_if_missing = 1, direct_io = 0, point_nogil = 0, parallelism = 2, i;
    long long cache_bytes = 64LL << 20, wbuf_bytes = 64LL << 20;
    const char *compression = "none";
    char *err = NULL;
    DBObject *self;
    PyObject *mod;
    modstate *st;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$pLLipsp:DB", kwlist, &path_obj,
                                     &create_if_missing, &cache_bytes, &wbuf_bytes,
                                     &parallelism, &direct_io, &compression, &point_nogil))
        return NULL;
    if (cache_bytes < 0 || wbuf_bytes <= 0 || parallelism < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "block_cache_bytes must be >= 0, write_buffer_bytes and parallelism > 0");
        return NULL;
    }
    for (i = 0; compressions[i].name != NULL; i++)
        if (strcmp(compressions[i].name, compression) == 0)
            break;
    if (compressions[i].name == NULL) {
        PyErr_Format(PyExc_ValueError,
                     "unknown compression %s (none, snappy, zlib, bz2, lz4, lz4hc, zstd)",
                     compression);
        return NULL;
    }
    mod = PyType_GetModuleByDef(type, &module_def);
    if (mod == NULL)
        return NULL;
    st = (modstate *)PyModule_GetState(mod);
    if (!PyUnicode_FSConverter(path_obj, &path_bytes))
        return NULL;
    self = (DBObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(path_bytes);
        return NULL;
    }
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    self->point_nogil = point_nogil;
    self->compression = compressions[i].code;
    self->error = Py_NewRef(st->error);
    self->closed_error = Py_NewRef(st->closed_error);
    self->path = PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(path_bytes));
    if (self->path == NULL)
        goto fail;

    self->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(self->opts, (unsigned char)create_if_missing);
    rocksdb_options_increase_parallelism(self->opts, parallelism);
    rocksdb_options_optimize_level_style_compaction(self->opts, (uint64_t)wbuf_bytes);
    rocksdb_options_set_write_buffer_size(self->opts, (size_t)wbuf_bytes);
    rocksdb_options_set_compression(self->opts, self->compression);
    if (direct_io) {
        rocksdb_options_set_use_direct_reads(self->opts, 1);
        rocksdb_options_set_use_direct_io_for_flush_and_compaction(self->opts, 1);
    }
    self->table = rocksdb_block_based_options_create();
    if (cache_bytes > 0) {
        self->cache = rocksdb_cache_create_lru((size_t)cache_bytes);
        rocksdb_block_based_options_set_block_cache(self->table, self->cache);
    } else {
        rocksdb_block_based_options_set_no_block_cache(self->table, 1);
    }
    rocksdb_block_based_options_set_index_type(self->table,
                                               rocksdb_block_based_table_index_type_binary_search);
    rocksdb_options_set_block_based_table_factory(self->opts, self->table);
    self->ropts = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(self->ropts, 0); /* as the paper's SEEK */
    rocksdb_readoptions_set_fill_cache(self->ropts, 1);
    self->wopts = rocksdb_writeoptions_create();
    self->fopts = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(self->fopts, 1);

    {
        rocksdb_t *db;
        const char *cpath = PyBytes_AS_STRING(path_bytes);
        Py_BEGIN_ALLOW_THREADS /* recovery can take a while; nobody else sees self yet */
        db = rocksdb_open(self->opts, cpath, &err);
        Py_END_ALLOW_THREADS
        if (err != NULL) {
            raise_status(self, self->error, self->path, "open", err);
            goto fail;
        }
        self->db = db;
    }
    Py_DECREF(path_bytes);
    return (PyObject *)self;

fail:
    Py_DECREF(path_bytes);
    Py_DECREF(self);
    return NULL;
}

static int
db_traverse(DBObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void
db_dealloc(DBObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* no call can be in progress: each holds a reference to self */
    if (self->db != NULL || self->opts != NULL) {
        Py_BEGIN_ALLOW_THREADS
        db_free_handles(self);
        Py_END_ALLOW_THREADS
    }
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    Py_XDECREF(self->path);
    Py_XDECREF(self->error);
    Py_XDECREF(self->closed_error);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------ close */

PyDoc_STRVAR(db_close_doc,
"close()\n\n"
"Close the database (idempotent).  Calls in progress in other threads finish first (close\n"
"waits for them without the GIL); calls that start meanwhile or later raise KVClosedError.");

static PyObject *
db_close(DBObject *self, PyObject *Py_UNUSED(ignored))
{
    rocksdb_t *db = NULL;

    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    while (self->closing) /* another thread is closing: wait until it is done */
        pthread_cond_wait(&self->cv, &self->mu);
    if (self->db != NULL) {
        self->closing = 1;
        while (self->users > 0)
            pthread_cond_wait(&self->cv, &self->mu);
        db = self->db;
    }
    pthread_mutex_unlock(&self->mu);
    if (db != NULL) {
        /* closing is set, so no call can start: tear down outside the lock */
        db_free_handles(self);
        pthread_mutex_lock(&self->mu);
        self->closing = 0;
        pthread_cond_broadcast(&self->cv);
        pthread_mutex_unlock(&self->mu);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ point operations */

PyDoc_STRVAR(db_get_doc, "get(key) -> bytes | None\n\nThe value of key, or None.");

static PyObject *
db_get(DBObject *self, PyObject *arg)
{
    Py_buffer key;
    char *err = NULL;
    rocksdb_pinnableslice_t *ps;
    PyThreadState *ts = NULL;
    PyObject *res;

    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0)
        return NULL;
    if (db_enter(self) < 0) {
        PyBuffer_Release(&key);
        return NULL;
    }
    if (self->point_nogil)
        ts = PyEval_SaveThread();
    ps = rocksdb_get_pinned(self->db, self->ropts, key.buf, (size_t)key.len, &err);
    if (ts != NULL)
        PyEval_RestoreThread(ts);
    PyBuffer_Release(&key);
    if (err != NULL) {
        db_leave(self);
        return raise_status(self, self->error, self->path, "get", err);
    }
    if (ps == NULL) {
        db_leave(self);
        Py_RETURN_NONE;
    }
    {
        size_t vlen;
        const char *v = rocksdb_pinnableslice_value(ps, &vlen);
        res = PyBytes_FromStringAndSize(v, (Py_ssize_t)vlen);
    }
    rocksdb_pinnableslice_destroy(ps); /* it may pin a block: before leaving */
    db_leave(self);
    return res;
}

static int
two_buffers(PyObject *const *args, Py_ssize_t nargs, const char *name, Py_buffer *a, Py_buffer *b)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)", name, nargs);
        return -1;
    }
    if (PyObject_GetBuffer(args[0], a, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[1], b, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(a);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(db_put_doc, "put(key, value)\n\nInsert or overwrite key.");

static PyObject *
db_put(DBObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer key, value;
    char *err = NULL;
    PyThreadState *ts = NULL;

    if (two_buffers(args, nargs, "put", &key, &value) < 0)
        return NULL;
    if (db_enter(self) < 0) {
        PyBuffer_Release(&key);
        PyBuffer_Release(&value);
        return NULL;
    }
    if (self->point_nogil)
        ts = PyEval_SaveThread();
    rocksdb_put(self->db, self->wopts, key.buf, (size_t)key.len, value.buf, (size_t)value.len,
                &err);
    if (ts != NULL)
        PyEval_RestoreThread(ts);
    db_leave(self);
    PyBuffer_Release(&key);
    PyBuffer_Release(&value);
    if (err != NULL)
        return raise_status(self, self->error, self->path, "put", err);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ batch, flush, misc */

PyDoc_STRVAR(db_put_many_doc,
"put_many(items)\n\n"
"Write an iterable of (key, value) pairs as one write batch (the write runs without the GIL).");

static PyObject *
db_put_many(DBObject *self, PyObject *items)
{
    PyObject *it, *pair;
    rocksdb_writebatch_t *wb;
    char *err = NULL;

    it = PyObject_GetIter(items);
    if (it == NULL)
        return NULL;
    wb = rocksdb_writebatch_create();
    while ((pair = PyIter_Next(it)) != NULL) {
        PyObject *seq = PySequence_Fast(pair, "put_many() items must be (key, value) pairs");
        Py_buffer k, v;
        int bad;
        Py_DECREF(pair);
        if (seq == NULL)
            break;
        bad = PySequence_Fast_GET_SIZE(seq) != 2;
        if (bad)
            PyErr_SetString(PyExc_ValueError, "put_many() items must be (key, value) pairs");
        else if (two_buffers(PySequence_Fast_ITEMS(seq), 2, "put_many", &k, &v) < 0)
            bad = 1;
        if (!bad) {
            rocksdb_writebatch_put(wb, k.buf, (size_t)k.len, v.buf, (size_t)v.len);
            PyBuffer_Release(&k);
            PyBuffer_Release(&v);
        }
        Py_DECREF(seq);
        if (bad)
            break;
    }
    Py_DECREF(it);
    if (PyErr_Occurred() || db_enter(self) < 0) {
        rocksdb_writebatch_destroy(wb);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rocksdb_write(self->db, self->wopts, wb, &err);
    Py_END_ALLOW_THREADS
    db_leave(self);
    rocksdb_writebatch_destroy(wb);
    if (err != NULL)
        return raise_status(self, self->error, self->path, "write batch", err);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(db_flush_doc, "flush()\n\nFlush the memtables to SST files and wait (no GIL).");

static PyObject *
db_flush(DBObject *self, PyObject *Py_UNUSED(ignored))
{
    char *err = NULL;
    if (db_enter(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rocksdb_flush(self->db, self->fopts, &err);
    Py_END_ALLOW_THREADS
    db_leave(self);
    if (err != NULL)
        return raise_status(self, self->error, self->path, "flush", err);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(db_property_doc,
"get_property(name) -> str | None\n\n"
"A RocksDB property, e.g. 'rocksdb.estimate-num-keys' or 'rocksdb.stats'; None if unknown.");

static PyObject *
db_property(DBObject *self, PyObject *arg)
{
    const char *name;
    char *value;
    PyObject *res;
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "get_property() name must be a str");
        return NULL;
    }
    name = PyUnicode_AsUTF8(arg);
    if (name == NULL || db_enter(self) < 0)
        return NULL;
    value = rocksdb_property_value(self->db, name);
    db_leave(self);
    if (value == NULL)
        Py_RETURN_NONE;
    res = PyUnicode_DecodeUTF8(value, (Py_ssize_t)strlen(value), "replace");
    rocksdb_free(value);
    return res;
}

static PyObject *
db_get_closed(DBObject *self, void *Py_UNUSED(closure))
{
    int closed;
    pthread_mutex_lock(&self->mu);
    closed = self->db == NULL || self->closing;
    pthread_mutex_unlock(&self->mu);
    return PyBool_FromLong(closed);
}

static PyObject *
db_get_path(DBObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->path);
}

static PyObject *
db_get_compression(DBObject *self, void *Py_UNUSED(closure))
{
    int i;
    for (i = 0; compressions[i].name != NULL; i++)
        if (compressions[i].code == self->compression)
            return PyUnicode_FromString(compressions[i].name);
    Py_RETURN_NONE;
}

static PyObject *
db_get_point_nogil(DBObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->point_nogil);
}

static PyMethodDef db_methods[] = {
    {"get", (PyCFunction)db_get, METH_O, db_get_doc},
    {"put", (PyCFunction)(void (*)(void))db_put, METH_FASTCALL, db_put_doc},
    {"seek", (PyCFunction)(void (*)(void))db_seek, METH_FASTCALL, db_seek_doc},
    {"scan", (PyCFunction)(void (*)(void))db_scan, METH_FASTCALL, db_scan_doc},
    {"put_many", (PyCFunction)db_put_many, METH_O, db_put_many_doc},
    {"flush", (PyCFunction)db_flush, METH_NOARGS, db_flush_doc},
    {"get_property", (PyCFunction)db_property, METH_O, db_property_doc},
    {"close", (PyCFunction)db_close, METH_NOARGS, db_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef db_getset[] = {
    {"closed", (getter)db_get_closed, NULL, "True once close() has begun", NULL},
    {"path", (getter)db_get_path, NULL, "the database directory", NULL},
    {"compression", (getter)db_get_compression, NULL, "the compression of new files", NULL},
    {"point_nogil", (getter)db_get_point_nogil, NULL, "get/put release the GIL", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(db_doc,
"DB(path, *, create_if_missing=True, block_cache_bytes=64 MiB, write_buffer_bytes=64 MiB,\n"
"   parallelism=2, direct_io=False, compression='none', point_nogil=False)\n\n"
"A RocksDB database opened through RocksDB's C API.  LRU block cache, block-based table\n"
"with a binary-search index, level-style compaction; reads skip checksum verification and\n"
"fill the cache.  Thread-safe; seek/scan/put_many/flush/close run without the GIL.");

static PyType_Slot db_slots[] = {
    {Py_tp_new, db_new},
    {Py_tp_dealloc, db_dealloc},
    {Py_tp_traverse, db_traverse},
    {Py_tp_methods, db_methods},
    {Py_tp_getset, db_getset},
    {Py_tp_doc, (void *)db_doc},
    {0, NULL},
};

static PyType_Spec db_spec = {
    "skqueue.server._rocksdb.DB",
    sizeof(DBObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    db_slots,
};

/* ------------------------------------------------------------------ module */

static int
mod_exec(PyObject *mod)
{
    modstate *st = (modstate *)PyModule_GetState(mod);
    PyObject *errors = PyImport_ImportModule("skqueue.server.kverrors");
    if (errors == NULL)
        return -1;
    st->error = PyObject_GetAttrString(errors, "KVError");
    st->closed_error = PyObject_GetAttrString(errors, "KVClosedError");
    Py_DECREF(errors);
    if (st->error == NULL || st->closed_error == NULL)
        return -1;
    st->db_type = PyType_FromModuleAndSpec(mod, &db_spec, NULL);
    if (st->db_type == NULL)
        return -1;
    if (PyModule_AddObjectRef(mod, "DB", st->db_type) < 0 ||
        PyModule_AddObjectRef(mod, "KVError", st->error) < 0 ||
        PyModule_AddObjectRef(mod, "KVClosedError", st->closed_error) < 0 ||
        PyModule_AddStringConstant(mod, "ROCKSDB_VERSION", SKQ_ROCKSDB_VERSION) < 0)
        return -1;
    return 0;
}

static int
mod_traverse(PyObject *mod, visitproc visit, void *arg)
{
    modstate *st = (modstate *)PyModule_GetState(mod);
    Py_VISIT(st->error);
    Py_VISIT(st->closed_error);
    Py_VISIT(st->db_type);
    return 0;
}

static int
mod_clear(PyObject *mod)
{
    modstate *st = (modstate *)PyModule_GetState(mod);
    Py_CLEAR(st->error);
    Py_CLEAR(st->closed_error);
    Py_CLEAR(st->db_type);
    return 0;
}

static void
mod_free(void *mod)
{
    mod_clear((PyObject *)mod);
}

static PyModuleDef_Slot mod_slots[] = {
    {Py_mod_exec, mod_exec},
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "skqueue.server._rocksdb",
    "RocksDB through its C API; SEEK runs as one call without the GIL (see kv.py).",
    sizeof(modstate),
    NULL,
    mod_slots,
    mod_traverse,
    mod_clear,
    mod_free,
};

PyMODINIT_FUNC
PyInit__rocksdb(void)
{
    return PyModuleDef_Init(&module_def);
}
