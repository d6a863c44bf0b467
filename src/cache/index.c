/*
 * The cache index in SQLite. Schema, durability and the prune contract are
 * described in docs/internals/cache.md.
 *
 * One connection per kiln_cache, opened SQLITE_OPEN_FULLMUTEX; every public
 * call also holds c->lock, because the prepared statements are shared and a
 * multi-statement operation (put, delete) must not interleave with another
 * thread's statements on the same connection.
 */
#include "cache/index.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/log.h"
#include "basic/strbuf.h"

#define SCHEMA_VERSION 3
#define BUSY_TIMEOUT_MS 10000
#define ITER_PAGE 256
#define STAT_BATCH_MAX 1024
#define OUTPUTS_MAX 4096

static const char schema_v1[] =
	"CREATE TABLE results ("
	" id INTEGER PRIMARY KEY,"
	" op TEXT NOT NULL,"
	" outputs TEXT NOT NULL,"
	" meta TEXT,"
	" created INTEGER NOT NULL,"
	" duration_ms INTEGER NOT NULL,"
	" worker TEXT,"
	" platform TEXT,"
	" size INTEGER NOT NULL,"
	" last_used INTEGER NOT NULL);"
	"CREATE INDEX results_op ON results(op);"
	"CREATE INDEX results_last_used ON results(last_used);"
	"CREATE TABLE keys ("
	" key TEXT PRIMARY KEY,"
	" result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE"
	") WITHOUT ROWID;"
	"CREATE INDEX keys_result ON keys(result_id);"
	"CREATE TABLE statcache ("
	" scope TEXT NOT NULL,"
	" path TEXT NOT NULL,"
	" dev INTEGER NOT NULL,"
	" ino INTEGER NOT NULL,"
	" size INTEGER NOT NULL,"
	" mtime_ns INTEGER NOT NULL,"
	" ctime_ns INTEGER NOT NULL,"
	" digest TEXT NOT NULL,"
	" PRIMARY KEY (scope, path)) WITHOUT ROWID;";

#define RECORD_COLS                                                            \
	"r.id, r.op, r.outputs, r.meta, r.created, r.duration_ms, r.worker, "  \
	"r.platform, r.size, r.last_used, r.emulated"

enum stmt_id {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_GET,
	ST_TOUCH,
	ST_KEY_RESULT,
	ST_INSERT_RESULT,
	ST_UPSERT_KEY,
	ST_ALIAS_NEW,
	ST_DELETE_KEY,
	ST_DELETE_ORPHAN,
	ST_ITER,
	ST_COUNT_OP,
	ST_NTH_DURATION,
	ST_STAT_GET,
	ST_STAT_SCOPE,
	ST_STAT_CLEAR,
	ST_STAT_PUT,
	N_STMT,
};

static const char *const stmt_sql[N_STMT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_GET] = "SELECT " RECORD_COLS " FROM keys k"
		   " JOIN results r ON r.id = k.result_id WHERE k.key = ?1",
	[ST_TOUCH] = "UPDATE results SET last_used = ?2"
		     " WHERE id = ?1 AND last_used < ?2",
	[ST_KEY_RESULT] = "SELECT result_id FROM keys WHERE key = ?1",
	[ST_INSERT_RESULT] =
		"INSERT INTO results (op, outputs, meta, created, duration_ms,"
		" worker, platform, size, last_used, emulated)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
	[ST_UPSERT_KEY] = "INSERT INTO keys (key, result_id) VALUES (?1, ?2)"
			  " ON CONFLICT (key) DO UPDATE"
			  " SET result_id = excluded.result_id",
	[ST_ALIAS_NEW] = "INSERT OR IGNORE INTO keys (key, result_id)"
			 " SELECT ?2, result_id FROM keys WHERE key = ?1",
	[ST_DELETE_KEY] = "DELETE FROM keys WHERE key = ?1",
	[ST_DELETE_ORPHAN] =
		"DELETE FROM results WHERE id = ?1 AND NOT EXISTS"
		" (SELECT 1 FROM keys WHERE result_id = ?1)",
	[ST_ITER] = "SELECT " RECORD_COLS ", k.key FROM keys k"
		    " JOIN results r ON r.id = k.result_id"
		    " WHERE (r.last_used, k.key) > (?1, ?2)"
		    " ORDER BY r.last_used, k.key LIMIT ?3",
	[ST_COUNT_OP] = "SELECT count(*) FROM results WHERE op = ?1",
	[ST_NTH_DURATION] = "SELECT duration_ms FROM results WHERE op = ?1"
			    " ORDER BY duration_ms LIMIT ?2 OFFSET ?3",
	[ST_STAT_GET] = "SELECT dev, ino, size, mtime_ns, ctime_ns, digest, xattrs"
			" FROM statcache WHERE scope = ?1 AND path = ?2",
	[ST_STAT_SCOPE] = "SELECT path, dev, ino, size, mtime_ns, ctime_ns, digest, xattrs"
			  " FROM statcache WHERE scope = ?1 ORDER BY path LIMIT ?2",
	[ST_STAT_CLEAR] = "DELETE FROM statcache",
	[ST_STAT_PUT] = "INSERT OR REPLACE INTO statcache (scope, path, dev,"
			" ino, size, mtime_ns, ctime_ns, digest, xattrs)"
			" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
};

struct stat_row {
	char *scope, *path;
	int64_t dev, ino, size, mtime_ns, ctime_ns;
	char digest[KILN_DIGEST_STRLEN];
	int xattrs; /* -1 unknown, 0 none, 1 some */
};

struct kiln_cache {
	sqlite3 *db;
	char *path;
	pthread_mutex_t lock;
	sqlite3_stmt *stmt[N_STMT];
	/* stat_put rows buffered between kiln_cache_begin and _commit */
	unsigned batch_depth;
	struct stat_row *pending;
	size_t n_pending, alloc_pending;
	/* Records hit but not yet touched (last_used): written in batches. */
	int64_t *touched;
	size_t n_touched, alloc_touched;
	unsigned read_depth; /* kiln_cache_read_begin nesting */
};

/* Touches kept before one transaction writes them. */
#define TOUCH_BATCH 4096u

static void flush_touches_locked(struct kiln_cache *c);

static int sqlite_to_errno(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_ROW:
	case SQLITE_DONE:
		return 0;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_NOTADB:
	case SQLITE_CORRUPT:
		return -EBADMSG;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_CANTOPEN:
		return -ENOENT;
	case SQLITE_READONLY:
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_CONSTRAINT:
	case SQLITE_MISUSE:
	case SQLITE_RANGE:
		return -EINVAL;
	default:
		return -EIO;
	}
}

/* Set *err from the connection's last error; returns the errno code. */
static int db_error(struct kiln_cache *c, int rc, struct kiln_error **err,
		    const char *what)
{
	return kiln_error_set(err, sqlite_to_errno(rc) ?: -EIO,
			      "cache index %s: %s: %s", c->path, what,
			      sqlite3_errmsg(c->db));
}

static sqlite3_stmt *stmt_get(struct kiln_cache *c, enum stmt_id id)
{
	sqlite3_stmt *st = c->stmt[id];
	int rc;

	if (st) {
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
		return st;
	}
	rc = sqlite3_prepare_v3(c->db, stmt_sql[id], -1,
				SQLITE_PREPARE_PERSISTENT, &st, NULL);
	if (rc != SQLITE_OK) {
		log_debug("cache: prepare %d: %s", (int)id,
			  sqlite3_errmsg(c->db));
		return NULL;
	}
	c->stmt[id] = st;
	return st;
}

/* Run a statement expecting no rows; reset it afterwards. */
static int step_done(struct kiln_cache *c, sqlite3_stmt *st,
		     struct kiln_error **err, const char *what)
{
	int rc;

	if (!st)
		return db_error(c, sqlite3_errcode(c->db), err, what);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return db_error(c, rc, err, what);
	return 0;
}

static int tx_begin(struct kiln_cache *c, struct kiln_error **err)
{
	/* In a read bracket of this thread: write in it (tx_end commits it). */
	if (!sqlite3_get_autocommit(c->db))
		return 0;
	return step_done(c, stmt_get(c, ST_BEGIN), err, "begin transaction");
}

/* Commit when r == 0, otherwise roll back; returns r or the commit error. */
static int tx_end(struct kiln_cache *c, int r, struct kiln_error **err)
{
	if (r == 0) {
		r = step_done(c, stmt_get(c, ST_COMMIT), err, "commit");
		if (r == 0)
			return 0;
	}
	if (!sqlite3_get_autocommit(c->db))
		(void)step_done(c, stmt_get(c, ST_ROLLBACK), NULL, "rollback");
	return r;
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (!s)
		return sqlite3_bind_null(st, i);
	return sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
}

/* ---- opening ---- */

static int exec_sql(struct kiln_cache *c, const char *sql, const char *what,
		    struct kiln_error **err)
{
	int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);

	if (rc != SQLITE_OK)
		return db_error(c, rc, err, what ? what : sql);
	return 0;
}

static int pragma_int(struct kiln_cache *c, const char *sql, int64_t *out,
		      struct kiln_error **err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW)
			*out = sqlite3_column_int64(st, 0);
	}
	if (rc != SQLITE_ROW) {
		rc = db_error(c, rc, err, sql);
		sqlite3_finalize(st);
		return rc;
	}
	sqlite3_finalize(st);
	return 0;
}

static int set_wal(struct kiln_cache *c, struct kiln_error **err)
{
	sqlite3_stmt *st = NULL;
	int rc, r = 0;

	rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode=WAL", -1, &st,
				NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc != SQLITE_ROW)
		r = db_error(c, rc, err, "journal_mode=WAL");
	else if (strcmp((const char *)sqlite3_column_text(st, 0), "wal"))
		r = kiln_error_set(err, -EIO,
				   "cache index %s: cannot use WAL mode (got %s)",
				   c->path, sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return r;
}

static int migrate(struct kiln_cache *c, struct kiln_error **err)
{
	int64_t version = 0;
	int r;

	r = tx_begin(c, err);
	if (r < 0)
		return r;
	r = pragma_int(c, "PRAGMA user_version", &version, err);
	if (r == 0 && version > SCHEMA_VERSION)
		r = kiln_error_set(err, -EPROTO,
				   "cache index %s: schema version %" PRId64
				   " is newer than this kiln supports (%d)",
				   c->path, version, SCHEMA_VERSION);
	if (r == 0 && version < 1) {
		r = exec_sql(c, schema_v1, "create schema", err);
		if (r == 0)
			r = exec_sql(c, "PRAGMA user_version = 1", NULL, err);
	}
	/* v2: whether the result was made under emulation (provenance). */
	if (r == 0 && version < 2) {
		r = exec_sql(c, "ALTER TABLE results ADD COLUMN emulated INTEGER NOT NULL DEFAULT 0",
			     "add results.emulated", err);
		if (r == 0)
			r = exec_sql(c, "PRAGMA user_version = 2", NULL, err);
	}
	/*
	 * v3: whether a stat-cached file had xattrs (-1 unknown, 0 none,
	 * 1 some): an unchanged ctime means unchanged xattrs, so a context
	 * walk skips listing them for files that had none.
	 */
	if (r == 0 && version < 3) {
		r = exec_sql(c, "ALTER TABLE statcache ADD COLUMN xattrs INTEGER NOT NULL DEFAULT -1",
			     "add statcache.xattrs", err);
		if (r == 0)
			r = exec_sql(c, "PRAGMA user_version = 3", NULL, err);
	}
	/* Future migrations: if (version < 4) ... each in this transaction. */
	return tx_end(c, r, err);
}

static int configure(struct kiln_cache *c, struct kiln_error **err)
{
	int r;

	sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
	sqlite3_extended_result_codes(c->db, 1);
	r = set_wal(c, err);
	if (r == 0)
		r = exec_sql(c, "PRAGMA synchronous=NORMAL", NULL, err);
	if (r == 0)
		r = exec_sql(c, "PRAGMA foreign_keys=ON", NULL, err);
	/* Statement journals in memory: a file write per key written otherwise. */
	if (r == 0)
		r = exec_sql(c, "PRAGMA temp_store=MEMORY", NULL, err);
	/* 32 MiB of page cache: a solve's aliases (one transaction) fit without spilling. */
	if (r == 0)
		r = exec_sql(c, "PRAGMA cache_size=-32768", NULL, err);
	if (r == 0)
		r = migrate(c, err);
	return r;
}

int kiln_cache_open(const char *path, struct kiln_cache **out,
		    struct kiln_error **err)
{
	struct kiln_cache *c;
	int rc, r;

	*out = NULL;
	c = xcalloc(1, sizeof(*c));
	c->path = xstrdup(path);
	{
		pthread_mutexattr_t ma;

		/* Recursive: a read bracket's owner calls the API inside it. */
		pthread_mutexattr_init(&ma);
		pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
		pthread_mutex_init(&c->lock, &ma);
		pthread_mutexattr_destroy(&ma);
	}
	rc = sqlite3_open_v2(path, &c->db,
			     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
				     SQLITE_OPEN_FULLMUTEX,
			     NULL);
	if (rc != SQLITE_OK) {
		r = kiln_error_set(err, sqlite_to_errno(rc) ?: -EIO,
				   "cache index %s: cannot open: %s", path,
				   c->db ? sqlite3_errmsg(c->db)
					 : sqlite3_errstr(rc));
		kiln_cache_free(c);
		return r;
	}
	r = configure(c, err);
	if (r < 0) {
		kiln_cache_free(c);
		return r;
	}
	*out = c;
	return 0;
}

static void stat_row_release(struct stat_row *row)
{
	free(row->scope);
	free(row->path);
}

void kiln_cache_free(struct kiln_cache *c)
{
	size_t i;

	if (!c)
		return;
	flush_touches_locked(c);
	free(c->touched);
	for (i = 0; i < c->n_pending; i++)
		stat_row_release(&c->pending[i]);
	free(c->pending);
	for (i = 0; i < N_STMT; i++)
		sqlite3_finalize(c->stmt[i]);
	sqlite3_close_v2(c->db);
	pthread_mutex_destroy(&c->lock);
	free(c->path);
	free(c);
}

/* ---- records ---- */

void kiln_cache_record_release(struct kiln_cache_record *r)
{
	if (!r)
		return;
	free(r->key);
	free(r->op);
	free(r->outputs);
	free(r->meta);
	free(r->worker);
	free(r->platform);
	memset(r, 0, sizeof(*r));
}

/* outputs column: a JSON array of digest strings, ["sha256:…", …]. */
static int outputs_encode(const struct kiln_cache_record *rec,
			  struct kiln_strbuf *sb)
{
	size_t i;
	int r = kiln_strbuf_addch(sb, '[');

	for (i = 0; r == 0 && i < rec->n_outputs; i++) {
		if (!kiln_digest_is_set(&rec->outputs[i]))
			return -EINVAL;
		r = kiln_strbuf_addf(sb, "%s\"%s\"", i ? "," : "",
				     KILN_DIGEST_STR(&rec->outputs[i]));
	}
	if (r == 0)
		r = kiln_strbuf_addch(sb, ']');
	return r;
}

static int outputs_decode(const char *s, struct kiln_cache_record *rec)
{
	char buf[KILN_DIGEST_STRLEN];
	const char *end;
	size_t alloc = 0, len;

	if (!s || *s++ != '[')
		return -EBADMSG;
	while (*s != ']') {
		if (rec->n_outputs && *s++ != ',')
			return -EBADMSG;
		if (*s++ != '"' || !(end = strchr(s, '"')))
			return -EBADMSG;
		len = (size_t)(end - s);
		if (len >= sizeof(buf) || rec->n_outputs >= OUTPUTS_MAX)
			return -EBADMSG;
		memcpy(buf, s, len);
		buf[len] = '\0';
		rec->outputs = xgrow(rec->outputs, &alloc, rec->n_outputs + 1,
				     sizeof(*rec->outputs));
		if (kiln_digest_parse(buf, &rec->outputs[rec->n_outputs]) < 0)
			return -EBADMSG;
		rec->n_outputs++;
		s = end + 1;
	}
	return s[1] == '\0' ? 0 : -EBADMSG;
}

static char *column_strdup(sqlite3_stmt *st, int i)
{
	const unsigned char *s = sqlite3_column_text(st, i);

	return s ? xstrdup((const char *)s) : NULL;
}

/* Fill rec from a row of RECORD_COLS starting at column 0; *id gets r.id. */
static int record_from_row(struct kiln_cache *c, sqlite3_stmt *st,
			   struct kiln_cache_record *rec, int64_t *id,
			   struct kiln_error **err)
{
	memset(rec, 0, sizeof(*rec));
	*id = sqlite3_column_int64(st, 0);
	rec->op = column_strdup(st, 1);
	rec->meta = column_strdup(st, 3);
	rec->created = sqlite3_column_int64(st, 4);
	rec->duration_ms = (uint64_t)sqlite3_column_int64(st, 5);
	rec->worker = column_strdup(st, 6);
	rec->platform = column_strdup(st, 7);
	rec->size = (uint64_t)sqlite3_column_int64(st, 8);
	rec->last_used = sqlite3_column_int64(st, 9);
	rec->emulated = sqlite3_column_int64(st, 10) != 0;
	if (outputs_decode((const char *)sqlite3_column_text(st, 2), rec) < 0) {
		kiln_cache_record_release(rec);
		return kiln_error_set(err, -EBADMSG,
				      "cache index %s: result %" PRId64
				      " has malformed outputs",
				      c->path, *id);
	}
	return 0;
}

static int64_t now_sec(void)
{
	return (int64_t)(kiln_now_real_ns() / 1000000000u);
}

/* A failed touch only ages records (prune may take them sooner). */
static void flush_touches_locked(struct kiln_cache *c)
{
	int64_t now = now_sec();
	bool own;
	size_t i;
	int r;

	if (c->n_touched == 0)
		return;
	/* Inside a caller's transaction (a batch), join it. */
	own = sqlite3_get_autocommit(c->db);
	r = own ? tx_begin(c, NULL) : 0;
	for (i = 0; r == 0 && i < c->n_touched; i++) {
		sqlite3_stmt *st = stmt_get(c, ST_TOUCH);

		if (st) {
			sqlite3_bind_int64(st, 1, c->touched[i]);
			sqlite3_bind_int64(st, 2, now);
		}
		r = step_done(c, st, NULL, "touch");
	}
	if (own)
		tx_end(c, r, NULL);
	c->n_touched = 0;
}

void kiln_cache_read_begin(struct kiln_cache *c)
{
	pthread_mutex_lock(&c->lock);
	/* A failed BEGIN leaves each statement its own transaction: slower only. */
	if (sqlite3_get_autocommit(c->db))
		(void)exec_sql(c, "BEGIN", NULL, NULL);
	c->read_depth++;
}

void kiln_cache_read_end(struct kiln_cache *c)
{
	if (--c->read_depth == 0 && !sqlite3_get_autocommit(c->db) &&
	    exec_sql(c, "COMMIT", NULL, NULL) < 0)
		(void)exec_sql(c, "ROLLBACK", NULL, NULL);
	pthread_mutex_unlock(&c->lock);
}

void kiln_cache_flush(struct kiln_cache *c)
{
	pthread_mutex_lock(&c->lock);
	flush_touches_locked(c);
	pthread_mutex_unlock(&c->lock);
}

static int get_locked(struct kiln_cache *c, const char *key,
		      struct kiln_cache_record *out, struct kiln_error **err)
{
	sqlite3_stmt *st = stmt_get(c, ST_GET);
	int64_t id, now = now_sec();
	int rc, r;

	if (!st)
		return db_error(c, sqlite3_errcode(c->db), err, "get");
	bind_text(st, 1, key);
	rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		sqlite3_reset(st);
		return -ENOENT;
	}
	if (rc != SQLITE_ROW) {
		sqlite3_reset(st);
		return db_error(c, rc, err, key);
	}
	r = record_from_row(c, st, out, &id, err);
	sqlite3_reset(st);
	if (r < 0)
		return r;
	out->key = xstrdup(key);
	if (out->last_used < now) {
		/* Written later, many in one transaction: a solve hits thousands. */
		c->touched = xgrow(c->touched, &c->alloc_touched, c->n_touched + 1,
				   sizeof(*c->touched));
		c->touched[c->n_touched++] = id;
		out->last_used = now;
		if (c->n_touched >= TOUCH_BATCH)
			flush_touches_locked(c);
	}
	return 0;
}

int kiln_cache_get(struct kiln_cache *c, const char *key,
		   struct kiln_cache_record *out, struct kiln_error **err)
{
	int r;

	memset(out, 0, sizeof(*out));
	if (!key)
		return kiln_error_set(err, -EINVAL, "cache get: no key");
	pthread_mutex_lock(&c->lock);
	r = get_locked(c, key, out, err);
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int insert_result(struct kiln_cache *c,
			 const struct kiln_cache_record *rec, int64_t *id,
			 struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf outs = KILN_STRBUF_INIT(1u << 20);
	sqlite3_stmt *st;
	int64_t now = now_sec();
	int r;

	if (outputs_encode(rec, &outs) < 0)
		return kiln_error_set(err, -EINVAL,
				      "cache put of op %s: bad outputs", rec->op);
	st = stmt_get(c, ST_INSERT_RESULT);
	if (st) {
		bind_text(st, 1, rec->op);
		bind_text(st, 2, kiln_strbuf_str(&outs));
		bind_text(st, 3, rec->meta);
		sqlite3_bind_int64(st, 4, rec->created ? rec->created : now);
		sqlite3_bind_int64(st, 5, (int64_t)rec->duration_ms);
		bind_text(st, 6, rec->worker);
		bind_text(st, 7, rec->platform);
		sqlite3_bind_int64(st, 8, (int64_t)rec->size);
		sqlite3_bind_int64(st, 9, now);
		sqlite3_bind_int(st, 10, rec->emulated);
	}
	r = step_done(c, st, err, "insert result");
	if (r == 0)
		*id = sqlite3_last_insert_rowid(c->db);
	return r;
}

/* Result id a key points at, 0 when none, or a negative error. */
static int64_t key_result(struct kiln_cache *c, const char *key,
			  struct kiln_error **err)
{
	sqlite3_stmt *st = stmt_get(c, ST_KEY_RESULT);
	int64_t id = 0;
	int rc;

	if (!st)
		return db_error(c, sqlite3_errcode(c->db), err, key);
	bind_text(st, 1, key);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		id = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return db_error(c, rc, err, key);
	return id;
}

static int delete_orphan(struct kiln_cache *c, int64_t id,
			 struct kiln_error **err)
{
	sqlite3_stmt *st = stmt_get(c, ST_DELETE_ORPHAN);

	if (st)
		sqlite3_bind_int64(st, 1, id);
	return step_done(c, st, err, "delete unreferenced result");
}

static int point_key(struct kiln_cache *c, const char *key, int64_t id,
		     struct kiln_error **err)
{
	sqlite3_stmt *st;
	int64_t old = key_result(c, key, err);
	int r;

	if (old < 0)
		return (int)old;
	st = stmt_get(c, ST_UPSERT_KEY);
	if (st) {
		bind_text(st, 1, key);
		sqlite3_bind_int64(st, 2, id);
	}
	r = step_done(c, st, err, key);
	if (r == 0 && old && old != id)
		r = delete_orphan(c, old, err);
	return r;
}

static int put_locked(struct kiln_cache *c, const char *const *keys,
		      size_t n_keys, const struct kiln_cache_record *rec,
		      struct kiln_error **err)
{
	int64_t id = 0;
	size_t i;
	int r;

	r = tx_begin(c, err);
	if (r < 0)
		return r;
	r = insert_result(c, rec, &id, err);
	for (i = 0; r == 0 && i < n_keys; i++)
		r = point_key(c, keys[i], id, err);
	return tx_end(c, r, err);
}

int kiln_cache_put(struct kiln_cache *c, const char *const *keys,
		   size_t n_keys, const struct kiln_cache_record *rec,
		   struct kiln_error **err)
{
	size_t i;
	int r;

	if (n_keys == 0 || !rec->op)
		return kiln_error_set(err, -EINVAL,
				      "cache put: need an op and at least one key");
	for (i = 0; i < n_keys; i++)
		if (!keys[i] || !keys[i][0])
			return kiln_error_set(err, -EINVAL,
					      "cache put of op %s: empty key",
					      rec->op);
	pthread_mutex_lock(&c->lock);
	r = put_locked(c, keys, n_keys, rec, err);
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int alias_locked(struct kiln_cache *c, const char *key, const char *alias,
			struct kiln_error **err)
{
	int64_t id;
	int r = tx_begin(c, err);

	if (r < 0)
		return r;
	id = key_result(c, key, err);
	if (id < 0)
		r = (int)id;
	else if (id == 0)
		r = kiln_error_set(err, -ENOENT, "cache index %s: no key %s", c->path, key);
	else
		r = point_key(c, alias, id, err);
	return tx_end(c, r, err);
}

void kiln_cache_meta_blobs(const char *meta, kiln_cache_blob_fn fn, void *ud)
{
	json_t *root, *v;
	size_t i;

	if (!meta || !(root = json_loads(meta, 0, NULL)))
		return;
	json_array_foreach(json_object_get(root, "blobs"), i, v) {
		struct kiln_digest d;
		bool ok = json_is_string(v) && kiln_digest_parse(json_string_value(v), &d) == 0;

		fn(ud, i, ok ? &d : NULL);
	}
	json_decref(root);
}

int kiln_cache_alias(struct kiln_cache *c, const char *key, const char *alias,
		     struct kiln_error **err)
{
	int r;

	if (!key || !*key || !alias || !*alias)
		return kiln_error_set(err, -EINVAL, "cache alias: empty key");
	pthread_mutex_lock(&c->lock);
	r = alias_locked(c, key, alias, err);
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int by_alias(const void *a, const void *b, void *aliases)
{
	const char *const *al = aliases;

	return strcmp(al[*(const size_t *)a], al[*(const size_t *)b]);
}

int kiln_cache_alias_many(struct kiln_cache *c, const char *const *keys,
			  const char *const *aliases, size_t n, size_t *skipped,
			  struct kiln_error **err)
{
	_cleanup_free_ size_t *order = xcalloc(n + 1, sizeof(size_t));
	size_t k, i, skip = 0;
	int64_t id;
	int r;

	pthread_mutex_lock(&c->lock);
	/* In key order, the inserts walk the index's pages once. */
	for (k = 0; k < n; k++)
		order[k] = k;
	qsort_r(order, n, sizeof(*order), by_alias, (void *)aliases);
	r = tx_begin(c, err);
	for (k = 0; r == 0 && k < n; k++) {
		i = order[k];
		/* A new alias (the usual case) takes one statement. */
		sqlite3_stmt *st = stmt_get(c, ST_ALIAS_NEW);

		if (st) {
			bind_text(st, 1, keys[i]);
			bind_text(st, 2, aliases[i]);
		}
		r = step_done(c, st, err, aliases[i]);
		if (r < 0 || sqlite3_changes(c->db) > 0)
			continue;
		/* The alias exists already (re-point it), or the key does not. */
		id = key_result(c, keys[i], err);
		if (id < 0)
			r = (int)id;
		else if (id == 0)
			skip++;
		else
			r = point_key(c, aliases[i], id, err);
	}
	r = tx_end(c, r, err);
	pthread_mutex_unlock(&c->lock);
	if (skipped)
		*skipped = skip;
	return r;
}

static int delete_locked(struct kiln_cache *c, const char *key,
			 struct kiln_error **err)
{
	int64_t id;
	int r;

	r = tx_begin(c, err);
	if (r < 0)
		return r;
	id = key_result(c, key, err);
	if (id < 0)
		r = (int)id;
	else if (id == 0)
		r = kiln_error_set(err, -ENOENT, "cache index %s: no key %s",
				   c->path, key);
	if (r == 0) {
		sqlite3_stmt *st = stmt_get(c, ST_DELETE_KEY);

		if (st)
			bind_text(st, 1, key);
		r = step_done(c, st, err, key);
	}
	if (r == 0)
		r = delete_orphan(c, id, err);
	return tx_end(c, r, err);
}

int kiln_cache_delete(struct kiln_cache *c, const char *key,
		      struct kiln_error **err)
{
	int r;

	if (!key)
		return kiln_error_set(err, -EINVAL, "cache delete: no key");
	pthread_mutex_lock(&c->lock);
	r = delete_locked(c, key, err);
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* ---- iteration ---- */

struct iter_page {
	struct kiln_cache_record recs[ITER_PAGE];
	size_t n;
	int64_t last_used; /* position after the page */
	char *last_key;
};

static void page_release(struct iter_page *p)
{
	size_t i;

	for (i = 0; i < p->n; i++)
		kiln_cache_record_release(&p->recs[i]);
	p->n = 0;
}

/* Load the next page of records after (p->last_used, p->last_key). */
static int page_load(struct kiln_cache *c, struct iter_page *p,
		     struct kiln_error **err)
{
	sqlite3_stmt *st = stmt_get(c, ST_ITER);
	int64_t id;
	int rc = SQLITE_DONE, r = 0;

	if (!st)
		return db_error(c, sqlite3_errcode(c->db), err, "iterate");
	sqlite3_bind_int64(st, 1, p->last_used);
	bind_text(st, 2, p->last_key);
	sqlite3_bind_int(st, 3, ITER_PAGE);
	while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct kiln_cache_record *rec = &p->recs[p->n];

		r = record_from_row(c, st, rec, &id, err);
		if (r < 0)
			break;
		rec->key = column_strdup(st, 11);
		p->n++;
	}
	sqlite3_reset(st);
	if (r == 0 && rc != SQLITE_DONE)
		r = db_error(c, rc, err, "iterate");
	if (r == 0 && p->n) {
		p->last_used = p->recs[p->n - 1].last_used;
		free(p->last_key);
		p->last_key = xstrdup(p->recs[p->n - 1].key);
	}
	return r;
}

int kiln_cache_foreach(struct kiln_cache *c, kiln_cache_iter_fn fn, void *ud,
		       struct kiln_error **err)
{
	struct iter_page *p = xcalloc(1, sizeof(*p));
	size_t i;
	int r = 0;

	p->last_used = INT64_MIN;
	p->last_key = xstrdup("");
	do {
		/* The lock is not held while fn runs: fn may use the cache. */
		pthread_mutex_lock(&c->lock);
		r = page_load(c, p, err);
		pthread_mutex_unlock(&c->lock);
		for (i = 0; r == 0 && i < p->n; i++)
			r = fn(&p->recs[i], ud);
		if (r == 0 && p->n < ITER_PAGE)
			break;
		page_release(p);
	} while (r == 0);
	page_release(p);
	free(p->last_key);
	free(p);
	return r;
}

/* ---- provenance ---- */

static int nth_durations(struct kiln_cache *c, const char *op, int64_t offset,
			 int count, uint64_t *sum)
{
	sqlite3_stmt *st = stmt_get(c, ST_NTH_DURATION);
	int rc, n = 0;

	if (!st)
		return -EIO;
	bind_text(st, 1, op);
	sqlite3_bind_int(st, 2, count);
	sqlite3_bind_int64(st, 3, offset);
	*sum = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		*sum += (uint64_t)sqlite3_column_int64(st, 0);
		n++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return sqlite_to_errno(rc) ?: -EIO;
	return n == count ? 0 : -ENOENT;
}

static int estimate_locked(struct kiln_cache *c, const char *op,
			   uint64_t *duration_ms)
{
	sqlite3_stmt *st = stmt_get(c, ST_COUNT_OP);
	int64_t n = 0;
	uint64_t sum;
	int rc, r, mid;

	if (!st)
		return -EIO;
	bind_text(st, 1, op);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	if (rc != SQLITE_ROW)
		return sqlite_to_errno(rc) ?: -EIO;
	if (n == 0)
		return -ENOENT;
	/* Odd count: the middle one; even: the mean of the two middle ones. */
	mid = n % 2 ? 1 : 2;
	r = nth_durations(c, op, (n - 1) / 2, mid, &sum);
	if (r == 0)
		*duration_ms = sum / (uint64_t)mid;
	return r;
}

int kiln_cache_estimate(struct kiln_cache *c, const char *op,
			uint64_t *duration_ms)
{
	int r;

	if (!op)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	r = estimate_locked(c, op, duration_ms);
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* ---- stat cache ---- */

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

static void stat_row_fill(struct stat_row *row, const struct stat *st)
{
	row->dev = (int64_t)st->st_dev;
	row->ino = (int64_t)st->st_ino;
	row->size = (int64_t)st->st_size;
	row->mtime_ns = ts_ns(&st->st_mtim);
	row->ctime_ns = ts_ns(&st->st_ctim);
}

static int stat_get_locked(struct kiln_cache *c, const char *scope,
			   const char *relpath, const struct stat *st,
			   struct kiln_digest *out, int *xattrs)
{
	sqlite3_stmt *q = stmt_get(c, ST_STAT_GET);
	struct stat_row want;
	int rc, r = -ENOENT;

	if (!q)
		return -EIO;
	stat_row_fill(&want, st);
	bind_text(q, 1, scope);
	bind_text(q, 2, relpath);
	rc = sqlite3_step(q);
	if (rc == SQLITE_ROW && sqlite3_column_int64(q, 0) == want.dev &&
	    sqlite3_column_int64(q, 1) == want.ino &&
	    sqlite3_column_int64(q, 2) == want.size &&
	    sqlite3_column_int64(q, 3) == want.mtime_ns &&
	    sqlite3_column_int64(q, 4) == want.ctime_ns) {
		const char *d = (const char *)sqlite3_column_text(q, 5);

		r = d && kiln_digest_parse(d, out) == 0 ? 0 : -ENOENT;
		if (r == 0 && xattrs)
			*xattrs = (int)sqlite3_column_int64(q, 6);
	} else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		r = sqlite_to_errno(rc) ?: -EIO;
	}
	sqlite3_reset(q);
	return r;
}

int kiln_cache_stat_get(struct kiln_cache *c, const char *scope,
			const char *relpath, const struct stat *st,
			struct kiln_digest *out, int *xattrs)
{
	int r;

	pthread_mutex_lock(&c->lock);
	r = stat_get_locked(c, scope, relpath, st, out, xattrs);
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int stat_flush(struct kiln_cache *c);

struct snap_row {
	char *path;
	struct stat_row st;
	struct kiln_digest digest;
};

struct kiln_stat_snapshot {
	struct snap_row *rows; /* by path, memcmp order (SQLite's BINARY) */
	size_t n;
};

void kiln_stat_snapshot_free(struct kiln_stat_snapshot *s)
{
	size_t i;

	if (!s)
		return;
	for (i = 0; i < s->n; i++)
		free(s->rows[i].path);
	free(s->rows);
	free(s);
}

int kiln_cache_stat_snapshot(struct kiln_cache *c, const char *scope, size_t max,
			     struct kiln_stat_snapshot **out, struct kiln_error **err)
{
	struct kiln_stat_snapshot *s = xcalloc(1, sizeof(*s));
	size_t alloc = 0;
	sqlite3_stmt *q;
	int rc, r = 0;

	*out = NULL;
	pthread_mutex_lock(&c->lock);
	/* The buffered puts first: the snapshot is what a get would say. */
	(void)stat_flush(c);
	q = stmt_get(c, ST_STAT_SCOPE);
	if (!q) {
		pthread_mutex_unlock(&c->lock);
		kiln_stat_snapshot_free(s);
		return db_error(c, sqlite3_errcode(c->db), err, "stat snapshot");
	}
	bind_text(q, 1, scope);
	sqlite3_bind_int64(q, 2, (int64_t)max + 1);
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		const char *path = (const char *)sqlite3_column_text(q, 0);
		const char *d = (const char *)sqlite3_column_text(q, 6);
		struct snap_row *row;

		if (s->n == max) {
			r = -E2BIG;
			break;
		}
		if (!path)
			continue;
		s->rows = xgrow(s->rows, &alloc, s->n + 1, sizeof(*s->rows));
		row = &s->rows[s->n];
		if (!d || kiln_digest_parse(d, &row->digest) < 0)
			continue; /* never a hit */
		row->path = xstrdup(path);
		row->st.dev = sqlite3_column_int64(q, 1);
		row->st.ino = sqlite3_column_int64(q, 2);
		row->st.size = sqlite3_column_int64(q, 3);
		row->st.mtime_ns = sqlite3_column_int64(q, 4);
		row->st.ctime_ns = sqlite3_column_int64(q, 5);
		row->st.xattrs = (int)sqlite3_column_int64(q, 7);
		s->n++;
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = db_error(c, rc, err, "stat snapshot");
	sqlite3_reset(q);
	pthread_mutex_unlock(&c->lock);
	if (r < 0) {
		kiln_stat_snapshot_free(s);
		return r;
	}
	*out = s;
	return 0;
}

static int snap_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const struct snap_row *)elem)->path);
}

int kiln_stat_snapshot_get(const struct kiln_stat_snapshot *s, const char *relpath,
			   const struct stat *st, struct kiln_digest *out, int *xattrs)
{
	const struct snap_row *row = s->n ? bsearch(relpath, s->rows, s->n, sizeof(*s->rows),
						    snap_cmp) : NULL;
	struct stat_row want;

	if (!row)
		return -ENOENT;
	stat_row_fill(&want, st);
	if (row->st.dev != want.dev || row->st.ino != want.ino || row->st.size != want.size ||
	    row->st.mtime_ns != want.mtime_ns || row->st.ctime_ns != want.ctime_ns)
		return -ENOENT;
	*out = row->digest;
	if (xattrs)
		*xattrs = row->st.xattrs;
	return 0;
}

int kiln_cache_stat_clear(struct kiln_cache *c, struct kiln_error **err)
{
	sqlite3_stmt *q;
	int r;

	pthread_mutex_lock(&c->lock);
	(void)stat_flush(c);
	q = stmt_get(c, ST_STAT_CLEAR);
	r = step_done(c, q, err, "stat cache clear");
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int stat_write(struct kiln_cache *c, const struct stat_row *row)
{
	sqlite3_stmt *q = stmt_get(c, ST_STAT_PUT);

	if (q) {
		bind_text(q, 1, row->scope);
		bind_text(q, 2, row->path);
		sqlite3_bind_int64(q, 3, row->dev);
		sqlite3_bind_int64(q, 4, row->ino);
		sqlite3_bind_int64(q, 5, row->size);
		sqlite3_bind_int64(q, 6, row->mtime_ns);
		sqlite3_bind_int64(q, 7, row->ctime_ns);
		bind_text(q, 8, row->digest);
		sqlite3_bind_int(q, 9, row->xattrs);
	}
	return step_done(c, q, NULL, "stat put");
}

/* Write the buffered stat rows in one transaction and drop them. */
static int stat_flush(struct kiln_cache *c)
{
	size_t i;
	int r = 0;

	if (c->n_pending == 0)
		return 0;
	r = tx_begin(c, NULL);
	for (i = 0; r == 0 && i < c->n_pending; i++)
		r = stat_write(c, &c->pending[i]);
	r = tx_end(c, r, NULL);
	for (i = 0; i < c->n_pending; i++)
		stat_row_release(&c->pending[i]);
	c->n_pending = 0;
	return r;
}

int kiln_cache_stat_put(struct kiln_cache *c, const char *scope,
			const char *relpath, const struct stat *st,
			const struct kiln_digest *d, int xattrs)
{
	struct stat_row row;
	int r;

	if (!kiln_digest_is_set(d))
		return -EINVAL;
	stat_row_fill(&row, st);
	row.xattrs = xattrs < 0 ? -1 : xattrs > 0;
	kiln_digest_fmt(d, row.digest);
	pthread_mutex_lock(&c->lock);
	if (c->batch_depth == 0) {
		row.scope = (char *)scope;
		row.path = (char *)relpath;
		r = stat_write(c, &row);
	} else {
		row.scope = xstrdup(scope);
		row.path = xstrdup(relpath);
		c->pending = xgrow(c->pending, &c->alloc_pending,
				   c->n_pending + 1, sizeof(*c->pending));
		c->pending[c->n_pending++] = row;
		r = c->n_pending >= STAT_BATCH_MAX ? stat_flush(c) : 0;
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

/*
 * Batches buffer stat rows in memory rather than holding a SQL transaction
 * open across calls, so other threads' puts and gets never wait on (or
 * get swept into) a context snapshot that is still hashing.
 */
int kiln_cache_begin(struct kiln_cache *c)
{
	pthread_mutex_lock(&c->lock);
	c->batch_depth++;
	pthread_mutex_unlock(&c->lock);
	return 0;
}

int kiln_cache_commit(struct kiln_cache *c)
{
	int r = 0;

	pthread_mutex_lock(&c->lock);
	if (c->batch_depth == 0)
		r = -EINVAL;
	else if (--c->batch_depth == 0)
		r = stat_flush(c);
	pthread_mutex_unlock(&c->lock);
	return r;
}

int kiln_cache_sync(struct kiln_cache *c, struct kiln_error **err)
{
	int rc, r = 0;

	pthread_mutex_lock(&c->lock);
	rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_FULL,
				       NULL, NULL);
	if (rc != SQLITE_OK)
		r = db_error(c, rc, err, "checkpoint");
	pthread_mutex_unlock(&c->lock);
	return r;
}
