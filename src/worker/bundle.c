/* OCI bundles: config.json (runtime spec 1.0.2) and user resolution. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "basic/strbuf.h"
#include "worker/worker-internal.h"

#define ETC_FILE_MAX (4u << 20)
/* Most processes and threads a step may have at once (a fork bomb's end). */
#define KILN_STEP_PIDS_MAX 16384
#define DEFAULT_PATH                                                           \
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Docker's default capability set. */
static const char *const default_caps[] = {
	"CAP_CHOWN",	    "CAP_DAC_OVERRIDE", "CAP_FSETID",
	"CAP_FOWNER",	    "CAP_MKNOD",	"CAP_NET_RAW",
	"CAP_SETGID",	    "CAP_SETUID",	"CAP_SETFCAP",
	"CAP_SETPCAP",	    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
	"CAP_KILL",	    "CAP_AUDIT_WRITE",
};

/* runc spec's defaults. */
static const char *const masked_paths[] = {
	"/proc/acpi",	     "/proc/asound",	   "/proc/kcore",
	"/proc/keys",	     "/proc/latency_stats", "/proc/timer_list",
	"/proc/timer_stats", "/proc/sched_debug",  "/sys/firmware",
	"/proc/scsi",
};
static const char *const readonly_paths[] = {
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};

/*
 * A step's seccomp filter (issue 14): everything a container with
 * Docker's default capabilities cannot use under Docker's default profile
 * either, refused with EPERM — making namespaces (unshare, setns, the
 * namespace flags of clone), mounting, kernel modules, keyrings, bpf,
 * perf, clocks, swap, reboot, kexec, handles to host files, userfaultfd.
 * The rest is allowed: a deny list, where Docker's profile is an allow
 * list (docs/internals/worker.md says what that changes). clone3 answers
 * ENOSYS, as Docker's does, so libc falls back to clone, whose flags the
 * filter can see.
 */
static const char *const denied_syscalls[] = {
	"acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
	"delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
	"get_kernel_syms", "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load",
	"kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
	"name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree",
	"perf_event_open", "pivot_root", "query_module", "quotactl", "quotactl_fd",
	"reboot", "request_key", "setns", "settimeofday", "stime", "swapoff", "swapon",
	"sysfs", "_sysctl", "syslog", "umount", "umount2", "unshare", "uselib",
	"userfaultfd", "ustat", "vm86", "vm86old", "vhangup",
};
/* CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET. */
static const uint64_t clone_ns_flags[] = {
	0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
};

static const struct kiln_bundle_mount default_mounts[] = {
	{ "/proc", "proc", "proc", "nosuid,noexec,nodev" },
	{ "/dev", "tmpfs", "tmpfs", "nosuid,strictatime,mode=755,size=65536k" },
	{ "/dev/pts", "devpts", "devpts",
	  "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5" },
	{ "/dev/shm", "tmpfs", "shm", "nosuid,noexec,nodev,mode=1777,size=65536k" },
	{ "/dev/mqueue", "mqueue", "mqueue", "nosuid,noexec,nodev" },
	{ "/sys", "sysfs", "sysfs", "nosuid,noexec,nodev,ro" },
};

static const struct kiln_bundle_mount host_net_mounts[] = {
	{ "/etc/resolv.conf", "bind", "/etc/resolv.conf", "rbind,ro" },
	{ "/etc/hosts", "bind", "/etc/hosts", "rbind,ro" },
};

void kiln_user_release(struct kiln_user *u)
{
	free(u->groups);
	free(u->home);
	u->groups = NULL;
	u->home = NULL;
	u->n_groups = 0;
}

/* ---- /etc/passwd and /etc/group ---- */

static char *read_etc(int rootfd, const char *name)
{
	_cleanup_close_ int fd = -1;
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(ETC_FILE_MAX);
	char buf[8192];

	fd = kiln_openat2(rootfd, name, O_RDONLY, 0,
			  KILN_RESOLVE_IN_ROOT | KILN_RESOLVE_NO_MAGICLINKS);
	if (fd < 0)
		return NULL;
	for (;;) {
		ssize_t k = read(fd, buf, sizeof(buf));

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0 || kiln_strbuf_add(&sb, buf, (size_t)k) < 0)
			break;
	}
	return kiln_strbuf_detach(&sb, NULL);
}

/* Split line into at most max ':' fields (in place); returns the count. */
static size_t split_fields(char *line, char **f, size_t max)
{
	size_t n = 0;

	while (line && n < max) {
		f[n++] = line;
		line = strchr(line, ':');
		if (line)
			*line++ = '\0';
	}
	return n;
}

/*
 * Find the line of an etc file whose field 0 equals name, or (when name
 * is NULL) whose field 2 equals id. Fields go into f (copies in *line).
 */
static bool etc_find(const char *data, const char *name, uint32_t id,
		     char **line, char **f, size_t nf)
{
	const char *p = data;

	while (p && *p) {
		const char *e = strchr(p, '\n');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		uint32_t v;

		free(*line);
		*line = xstrndup(p, len);
		p = e ? e + 1 : NULL;
		if (split_fields(*line, f, nf) < nf)
			continue;
		if (name ? !strcmp(f[0], name)
			 : kiln_parse_u32(f[2], &v) == 0 && v == id)
			return true;
	}
	free(*line);
	*line = NULL;
	return false;
}

static bool member_of(const char *members, const char *user)
{
	size_t n = strlen(user);
	const char *p = members;

	while (p && *p) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);

		if (len == n && !strncmp(p, user, n))
			return true;
		p = e ? e + 1 : NULL;
	}
	return false;
}

/* Supplementary groups: every group listing user as a member. */
static void find_groups(const char *group, const char *user,
			struct kiln_user *u)
{
	const char *p = group;
	size_t alloc = 0;

	while (p && *p) {
		const char *e = strchr(p, '\n');
		_cleanup_free_ char *line = xstrndup(p, e ? (size_t)(e - p)
							  : strlen(p));
		char *f[4];
		uint32_t gid;

		p = e ? e + 1 : NULL;
		if (split_fields(line, f, 4) < 4 || !member_of(f[3], user) ||
		    kiln_parse_u32(f[2], &gid) < 0)
			continue;
		u->groups = xgrow(u->groups, &alloc, u->n_groups + 1,
				  sizeof(*u->groups));
		u->groups[u->n_groups++] = gid;
	}
}

static int resolve_uid(const char *passwd, const char *spec,
		       struct kiln_user *u, char **name, bool *have_gid,
		       struct kiln_error **err)
{
	_cleanup_free_ char *line = NULL;
	char *f[7];
	bool numeric = kiln_parse_u32(spec, &u->uid) == 0;

	if (!passwd || !etc_find(passwd, numeric ? NULL : spec, u->uid, &line,
				 f, 7)) {
		if (numeric)
			return 0;
		return kiln_error_set(err, -ENOENT,
				      "user %s not found in the rootfs's /etc/passwd",
				      spec);
	}
	if (kiln_parse_u32(f[2], &u->uid) < 0 ||
	    kiln_parse_u32(f[3], &u->gid) < 0)
		return kiln_error_set(err, -EINVAL,
				      "bad /etc/passwd line for user %s", spec);
	*have_gid = true;
	*name = xstrdup(f[0]);
	free(u->home);
	u->home = xstrdup(*f[5] ? f[5] : "/");
	return 0;
}

static int resolve_gid(const char *group, const char *spec,
		       struct kiln_user *u, struct kiln_error **err)
{
	_cleanup_free_ char *line = NULL;
	char *f[4];

	if (kiln_parse_u32(spec, &u->gid) == 0)
		return 0;
	if (!group || !etc_find(group, spec, 0, &line, f, 4) ||
	    kiln_parse_u32(f[2], &u->gid) < 0)
		return kiln_error_set(err, -ENOENT,
				      "group %s not found in the rootfs's /etc/group",
				      spec);
	return 0;
}

int kiln_user_resolve(int rootfd, const char *user, struct kiln_user *out,
		      struct kiln_error **err)
{
	_cleanup_free_ char *passwd = read_etc(rootfd, "etc/passwd");
	_cleanup_free_ char *group = NULL, *spec = NULL, *name = NULL;
	char *colon;
	bool have_gid = false;
	int r;

	*out = (struct kiln_user){ .home = xstrdup("/") };
	spec = xstrdup(user && *user ? user : "0");
	colon = strchr(spec, ':');
	if (colon)
		*colon++ = '\0';
	r = resolve_uid(passwd, spec, out, &name, &have_gid, err);
	if (r == 0 && (colon || name))
		group = read_etc(rootfd, "etc/group");
	if (r == 0 && colon)
		r = resolve_gid(group, colon, out, err);
	if (r == 0 && name && group)
		find_groups(group, name, out);
	if (r < 0)
		kiln_user_release(out);
	return r;
}

/* ---- config.json ---- */

static json_t *str_array(const char *const *v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; v && (n ? i < n : v[i] != NULL); i++)
		json_array_append_new(a, json_string(v[i]));
	return a;
}

static bool has_env(const char *const *env, const char *key)
{
	size_t n = strlen(key);

	for (; env && *env; env++)
		if (!strncmp(*env, key, n) && (*env)[n] == '=')
			return true;
	return false;
}

static json_t *env_json(const struct kiln_bundle *b)
{
	json_t *a = str_array(b->env, 0);

	if (!has_env(b->env, "PATH"))
		json_array_append_new(a, json_string(DEFAULT_PATH));
	if (!has_env(b->env, "HOME")) {
		_cleanup_free_ char *h = xasprintf(
			"HOME=%s", b->user->home ? b->user->home : "/");
		json_array_append_new(a, json_string(h));
	}
	return a;
}

static json_t *process_json(const struct kiln_bundle *b)
{
	const struct kiln_user *u = b->user;
	json_t *caps = str_array(default_caps, ARRAY_SIZE(default_caps));
	json_t *gids = json_array();
	size_t i;

	for (i = 0; i < u->n_groups; i++)
		json_array_append_new(gids, json_integer(u->groups[i]));
	return json_pack(
		"{s:b, s:{s:I, s:I, s:o}, s:o, s:o, s:s, s:{s:o, s:O, s:O}, s:b}",
		"terminal", 0, "user", "uid", (json_int_t)u->uid, "gid",
		(json_int_t)u->gid, "additionalGids", gids, "args",
		str_array(b->argv, 0), "env", env_json(b), "cwd",
		b->cwd ? b->cwd : "/", "capabilities", "bounding", caps,
		"effective", caps, "permitted", caps, "noNewPrivileges", 1);
}

static json_t *options_json(const char *opts)
{
	json_t *a = json_array();
	const char *p = opts;

	while (p && *p) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);

		if (len)
			json_array_append_new(a, json_stringn(p, len));
		p = e ? e + 1 : NULL;
	}
	return a;
}

static void add_mounts(json_t *a, const struct kiln_bundle_mount *m, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		json_array_append_new(
			a, json_pack("{s:s, s:s, s:s, s:o}", "destination",
				     m[i].dest, "type", m[i].type, "source",
				     m[i].source, "options",
				     options_json(m[i].options)));
}

static json_t *seccomp_json(void)
{
#if defined(__x86_64__)
	static const char *const arches[] = { "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32" };
#elif defined(__aarch64__)
	static const char *const arches[] = { "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM" };
#else
	static const char *const arches[] = { "SCMP_ARCH_NATIVE" };
#endif
	json_t *rules = json_array(), *a = json_array();
	size_t i;

	for (i = 0; i < ARRAY_SIZE(denied_syscalls); i++)
		json_array_append_new(a, json_string(denied_syscalls[i]));
	json_array_append_new(rules, json_pack("{s:o, s:s, s:i}", "names", a, "action",
					       "SCMP_ACT_ERRNO", "errnoRet", EPERM));
	json_array_append_new(rules, json_pack("{s:[s], s:s, s:i}", "names", "clone3", "action",
					       "SCMP_ACT_ERRNO", "errnoRet", ENOSYS));
	/* One rule per flag: the filter can only test a masked value for equality. */
	for (i = 0; i < ARRAY_SIZE(clone_ns_flags); i++)
		json_array_append_new(
			rules, json_pack("{s:[s], s:s, s:i, s:[{s:i, s:I, s:I, s:s}]}", "names",
					 "clone", "action", "SCMP_ACT_ERRNO", "errnoRet", EPERM,
					 "args", "index", 0, "value", (json_int_t)clone_ns_flags[i],
					 "valueTwo", (json_int_t)clone_ns_flags[i], "op",
					 "SCMP_CMP_MASKED_EQ"));
	return json_pack("{s:s, s:o, s:o}", "defaultAction", "SCMP_ACT_ALLOW", "architectures",
			 str_array(arches, ARRAY_SIZE(arches)), "syscalls", rules);
}

static json_t *linux_json(const struct kiln_bundle *b)
{
	json_t *ns = json_array();
	static const char *const types[] = { "pid", "ipc", "uts", "mount",
					     "network" };
	size_t i, n = ARRAY_SIZE(types) - (b->network_host ? 1 : 0);

	for (i = 0; i < n; i++)
		json_array_append_new(ns, json_pack("{s:s}", "type", types[i]));
	return json_pack(
		"{s:o, s:o, s:o, s:{s:[{s:b, s:s}], s:{s:I}}, s:o}", "namespaces", ns,
		"maskedPaths", str_array(masked_paths, ARRAY_SIZE(masked_paths)),
		"readonlyPaths",
		str_array(readonly_paths, ARRAY_SIZE(readonly_paths)),
		"resources", "devices", "allow", 0, "access", "rwm", "pids", "limit",
		(json_int_t)KILN_STEP_PIDS_MAX, "seccomp", seccomp_json());
}

/*
 * A step without the host's network still gets /etc/hosts and
 * /etc/resolv.conf, as in BuildKit (executor/oci: they are bind-mounted
 * whatever the network mode): its own hosts file naming only loopback,
 * and the host's resolver configuration (useless without a network, but
 * present, so the step's /etc looks the same).
 */
static int write_net_files(const char *bundle_dir, json_t *mounts,
			   struct kiln_error **err)
{
	static const char hosts[] = "127.0.0.1\tlocalhost kiln\n"
				    "::1\tlocalhost ip6-localhost ip6-loopback\n";
	_cleanup_free_ char *hosts_path = xasprintf("%s/hosts", bundle_dir);
	_cleanup_free_ char *resolv_path = xasprintf("%s/resolv.conf", bundle_dir);
	_cleanup_free_ char *resolv = NULL;
	size_t len = 0;
	struct kiln_bundle_mount m[] = {
		{ "/etc/resolv.conf", "bind", resolv_path, "rbind,ro" },
		{ "/etc/hosts", "bind", hosts_path, "rbind,ro" },
	};
	int r;

	if (kiln_read_file_at(AT_FDCWD, "/etc/resolv.conf", 65536, &resolv, &len) < 0)
		len = 0;
	r = kiln_write_file_atomic_at(AT_FDCWD, resolv_path, resolv ? resolv : "",
				      len, 0644, false);
	if (r == 0)
		r = kiln_write_file_atomic_at(AT_FDCWD, hosts_path, hosts,
					      strlen(hosts), 0644, false);
	if (r < 0)
		return kiln_error_seterrno(err, r, "writing the step's hosts and resolv.conf in %s",
					   bundle_dir);
	add_mounts(mounts, m, ARRAY_SIZE(m));
	return 0;
}

int kiln_bundle_write(const char *bundle_dir, const struct kiln_bundle *b,
		      struct kiln_error **err)
{
	_cleanup_free_ char *path = xasprintf("%s/config.json", bundle_dir);
	json_t *mounts = json_array(), *cfg;
	char *s;
	int r;

	add_mounts(mounts, default_mounts, ARRAY_SIZE(default_mounts));
	if (b->network_host) {
		add_mounts(mounts, host_net_mounts, ARRAY_SIZE(host_net_mounts));
	} else if ((r = write_net_files(bundle_dir, mounts, err)) < 0) {
		json_decref(mounts);
		return r;
	}
	add_mounts(mounts, b->mounts, b->n_mounts);
	cfg = json_pack("{s:s, s:o, s:{s:s, s:b}, s:s, s:o, s:o}",
			"ociVersion", "1.0.2", "process", process_json(b),
			"root", "path", b->rootfs, "readonly", 0, "hostname",
			"kiln", "mounts", mounts, "linux", linux_json(b));
	if (!cfg)
		return kiln_error_set(err, -EINVAL, "building %s", path);
	s = json_dumps(cfg, JSON_COMPACT);
	json_decref(cfg);
	if (!s)
		return kiln_error_set(err, -ENOMEM, "encoding %s", path);
	r = kiln_write_file_atomic_at(AT_FDCWD, path, s, strlen(s), 0600, false);
	free(s);
	if (r < 0)
		return kiln_error_seterrno(err, r, "writing %s", path);
	return 0;
}
