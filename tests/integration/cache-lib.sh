# What the remote cache tests share (source after lib.sh).
#
#   cache_test_ctx DIR
#       A build context in DIR: a Dockerfile FROM ${BASE} with a RUN that
#       writes ~800 KB (seq) and a hardlink, a COPY and a last RUN, all
#       deterministic (a rebuild gives the same files), and its file f.
cache_test_ctx() { # DIR
	mkdir -p "$1"
	cat >"$1/Dockerfile" <<'DF'
ARG BASE
FROM ${BASE}
RUN seq 1 130000 > /big && echo small > /small && ln /small /small2
COPY f /f
RUN cat /f /small > /both
DF
	printf 'from the context\n' >"$1/f"
}
