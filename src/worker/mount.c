/* Overlay, bind and tmpfs mounts of layer chains; unmounting by prefix. */
#include "worker/layers.h"

#include <stdio.h>
#include <string.h>
#include <sys/mount.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "worker/worker-internal.h"

#define MOUNT_DATA_MAX 4096
#define MOUNTINFO_MAX (64u << 20)

int kiln_mount_bind(const char *src, const char *dst, bool ro)
{
	if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
		return -errno;
	if (ro && mount(NULL, dst, NULL,
			MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
			NULL) < 0) {
		int r = -errno;
		umount2(dst, MNT_DETACH);
		return r;
	}
	return 0;
}

/* Overlay's option parser splits on ',' and ':'; refuse such paths. */
static int add_path(struct kiln_strbuf *sb, const char *path)
{
	if (strpbrk(path, ",:\\"))
		return -EINVAL;
	return kiln_strbuf_adds(sb, path);
}

static int overlay_data(const struct kiln_chain *chain, const char *upper,
			const char *work, struct kiln_strbuf *sb)
{
	size_t i;
	int r;

	r = kiln_strbuf_adds(sb, "lowerdir=");
	for (i = 0; r == 0 && i < chain->n; i++) {
		if (i)
			r = kiln_strbuf_addch(sb, ':');
		if (r == 0)
			r = add_path(sb, chain->dirs[i]);
	}
	if (r == 0 && upper) {
		r = kiln_strbuf_adds(sb, ",upperdir=");
		if (r == 0)
			r = add_path(sb, upper);
		if (r == 0)
			r = kiln_strbuf_adds(sb, ",workdir=");
		if (r == 0)
			r = add_path(sb, work);
	}
	if (r == 0)
		r = kiln_strbuf_adds(sb, ",redirect_dir=off,metacopy=off,index=off");
	return r;
}

static int mount_empty_ro(const char *target)
{
	if (mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV,
		  "mode=0755,size=4k") < 0)
		return -errno;
	return 0;
}

int kiln_layers_mount(const struct kiln_chain *chain, const char *target,
		      const char *upper, const char *work,
		      struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf sb =
		KILN_STRBUF_INIT(MOUNT_DATA_MAX - 1);
	int r;

	if (chain->n == 0 && !upper)
		r = mount_empty_ro(target);
	else if (chain->n == 0)
		/* Nothing below: the upper itself is the root. */
		r = kiln_mount_bind(upper, target, false);
	else if (chain->n == 1 && !upper)
		r = kiln_mount_bind(chain->dirs[0], target, true);
	else if ((r = overlay_data(chain, upper, work, &sb)) == 0)
		r = mount("overlay", target, "overlay", upper ? 0 : MS_RDONLY,
			  sb.buf) < 0 ? -errno : 0;
	if (r < 0)
		return kiln_error_seterrno(err, r,
					   "mounting %zu layer(s) at %s%s",
					   chain->n, target,
					   r == -E2BIG ? " (options too long)"
						       : "");
	return 0;
}

int kiln_layers_umount(const char *target)
{
	if (umount2(target, 0) == 0)
		return 0;
	if (errno == EINVAL || errno == ENOENT)
		return 0; /* not mounted */
	if (errno == EBUSY && umount2(target, MNT_DETACH) == 0)
		return 0;
	return -errno;
}

/* Undo mountinfo's octal escapes (\040 for space) in place. */
static void unescape(char *s)
{
	char *o = s;

	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] &&
		    s[3]) {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 +
				      (s[3] - '0'));
			s += 4;
		} else {
			*o++ = *s++;
		}
	}
	*o = '\0';
}

/* Mount point (5th field) of one mountinfo line, or NULL. */
static char *mount_point(char *line)
{
	char *f = line;
	int i;

	for (i = 0; i < 4 && f; i++) {
		f = strchr(f, ' ');
		if (f)
			f++;
	}
	if (!f)
		return NULL;
	line = strchr(f, ' ');
	if (line)
		*line = '\0';
	unescape(f);
	return f;
}

static bool under(const char *path, const char *prefix)
{
	size_t n = strlen(prefix);

	return !strncmp(path, prefix, n) && (path[n] == '\0' || path[n] == '/');
}

static int cmp_len_desc(const void *a, const void *b)
{
	size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);

	return la < lb ? 1 : la > lb ? -1 : 0;
}

/* Mount points at or below prefix, deepest first. */
static int list_under(const char *prefix, char ***out, size_t *n)
{
	_cleanup_free_ char *data = NULL;
	size_t len, alloc = 0;
	char *line, *next;
	int r;

	*out = NULL;
	*n = 0;
	r = kiln_read_file_at(AT_FDCWD, "/proc/self/mountinfo", MOUNTINFO_MAX,
			      &data, &len);
	if (r < 0)
		return r;
	for (line = data; line && *line; line = next) {
		char *mp;

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		mp = mount_point(line);
		if (!mp || !under(mp, prefix))
			continue;
		*out = xgrow(*out, &alloc, *n + 1, sizeof(**out));
		(*out)[(*n)++] = xstrdup(mp);
	}
	if (*n > 1)
		qsort(*out, *n, sizeof(**out), cmp_len_desc);
	return 0;
}

int kiln_umount_under(const char *prefix)
{
	int round, r = 0;

	/* Stacked mounts need more than one pass. */
	for (round = 0; round < 16; round++) {
		char **mps;
		size_t n, i;

		r = list_under(prefix, &mps, &n);
		if (r < 0 || n == 0) {
			free(mps);
			return r;
		}
		r = 0;
		for (i = 0; i < n; i++) {
			int q = kiln_layers_umount(mps[i]);

			log_debug("umount %s: %d", mps[i], q);
			if (q < 0 && r == 0)
				r = q;
		}
		kiln_strv_free(mps, n);
	}
	return r ? r : -EBUSY;
}
