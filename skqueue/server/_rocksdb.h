/* skqueue.server._rocksdb: what its two files share (see _rocksdb.c for the design).
 *
 * _rocksdb.c      the DB handle: open, the use count and close, point get/put, batches,
 *                 flush, properties, the module;
 * _rocksdb_scan.c SEEK and SCAN: one call each, the whole iteration without the GIL.
 */
#ifndef SKQ_ROCKSDB_H
#define SKQ_ROCKSDB_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rocksdb/c.h>

#ifndef SKQ_ROCKSDB_VERSION
#define SKQ_ROCKSDB_VERSION "unknown"
#endif

typedef struct {
    PyObject *error;        /* KVError */
    PyObject *closed_error; /* KVClosedError */
    PyObject *db_type;
} modstate;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* broadcast when users reaches 0 and when a close ends */
    Py_ssize_t users;       /* calls in progress */
    int closing;            /* close() is waiting for the calls or closing the database */
    int point_nogil;        /* release the GIL around point get/put too */
    int compression;
    rocksdb_t *db;          /* NULL once closed */
    rocksdb_options_t *opts;
    rocksdb_block_based_table_options_t *table;
    rocksdb_cache_t *cache;
    rocksdb_readoptions_t *ropts;
    rocksdb_writeoptions_t *wopts;
    rocksdb_flushoptions_t *fopts;
    PyObject *path;         /* str */
    PyObject *error;
    PyObject *closed_error;
} DBObject;


/* A RocksDB status string -> KVError naming the operation and the likely cause. */
PyObject *raise_status(DBObject *self, PyObject *error, PyObject *path, const char *what,
                       char *err);
/* Every call on the handle holds a use count (-1 with KVClosedError set if closed). */
int db_enter(DBObject *self);
void db_leave(DBObject *self);

PyObject *db_seek(DBObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *db_scan(DBObject *self, PyObject *const *args, Py_ssize_t nargs);
extern const char db_seek_doc[];
extern const char db_scan_doc[];

#endif
