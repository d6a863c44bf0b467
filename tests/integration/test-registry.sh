#!/bin/bash
# Images out and in through a real registry (Debian's docker-registry on
# loopback), anonymous and with htpasswd basic auth: push a two-platform
# image, inspect it with skopeo, build FROM it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry-lib.sh"
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"
CLEANUP_HOOKS+=("registry_stop")

CTX="$T/ctx"
mkdir -p "$CTX"
cat >"$CTX/Dockerfile" <<'DF'
ARG BASE
FROM --platform=$BUILDPLATFORM ${BASE} AS build
RUN echo "from the build stage" > /built
FROM ${BASE}
ARG TARGETARCH
COPY --from=build /built /built
RUN echo "$TARGETARCH $(uname -m)" > /arch
CMD ["cat", "/arch"]
DF

push_and_check() { # MODE
	local mode=$1 repo
	registry_start "$T/reg-$mode" "$mode" || fail "registry ($mode) did not start"
	repo="$REGISTRY/kiln/app"

	kbuild --platform linux/amd64,linux/arm64 --build-arg "BASE=oci-layout://$LAYOUT:latest" \
		-t "$repo:1" --push "$CTX" || fail "$mode: push failed: $(tail -3 "$T/progress.json")"
	local creds=()
	[ "$mode" = htpasswd ] && creds=(--creds "$REGISTRY_USER:$REGISTRY_PASSWORD")
	skopeo inspect --raw --tls-verify=false "${creds[@]}" "docker://$repo:1" >"$T/index-$mode.json" ||
		fail "$mode: skopeo cannot read the pushed image"
	assert_eq "$(jq -r '.mediaType' "$T/index-$mode.json")" "application/vnd.oci.image.index.v1+json" "$mode index media type"
	assert_eq "$(jq -r '[.manifests[].platform | .os + "/" + .architecture] | sort | join(",")' "$T/index-$mode.json")" \
		"linux/amd64,linux/arm64" "$mode index platforms"
	for arch in amd64 arm64; do
		assert_eq "$(skopeo inspect --config --tls-verify=false "${creds[@]}" --override-arch "$arch" \
			"docker://$repo:1" | jq -r .architecture)" "$arch" "$mode $arch config"
	done

	# Another build uses the pushed image in FROM, for both platforms.
	mkdir -p "$T/ctx2-$mode"
	printf 'FROM %s:1\nRUN cat /arch /built > /seen\n' "$repo" >"$T/ctx2-$mode/Dockerfile"
	kbuild --platform linux/amd64,linux/arm64 -o "$T/from-$mode" "$T/ctx2-$mode" ||
		fail "$mode: FROM the pushed image: $(tail -3 "$T/progress.json")"
	assert_eq "$(head -1 "$T/from-$mode/linux_amd64/seen")" "amd64 x86_64" "$mode amd64 FROM"
	assert_eq "$(head -1 "$T/from-$mode/linux_arm64/seen")" "arm64 aarch64" "$mode arm64 FROM"
	assert_eq "$(tail -1 "$T/from-$mode/linux_arm64/seen")" "from the build stage" "$mode build-stage file"

	# A registry name mapped to this registry's endpoint.
	if [ "$mode" = none ]; then
		printf 'FROM registry.kiln.test/kiln/app:1\nRUN cat /arch > /seen\n' >"$T/ctx2-$mode/Dockerfile"
		kbuild --platform linux/arm64 --registry-endpoint "registry.kiln.test=$REGISTRY" \
			--insecure-registry registry.kiln.test -o "$T/mapped" "$T/ctx2-$mode" ||
			fail "--registry-endpoint: $(tail -3 "$T/progress.json")"
		assert_eq "$(cat "$T/mapped/seen")" "arm64 aarch64" "FROM through --registry-endpoint"
	fi

	# Pushing the same image again uploads nothing.
	"$KILN" build --progress plain --platform linux/amd64,linux/arm64 \
		--build-arg "BASE=oci-layout://$LAYOUT:latest" -t "$repo:1" --push "$CTX" 2>"$T/push2.log" ||
		fail "$mode: second push"
	grep -q "0 blobs uploaded" "$T/push2.log" || fail "$mode: second push uploaded blobs: $(grep pushed "$T/push2.log")"
	registry_stop
}

push_and_check none

# htpasswd: credentials come from the docker config; without them, 401.
export DOCKER_CONFIG="$T/docker-config"
mkdir -p "$DOCKER_CONFIG"
echo '{}' >"$DOCKER_CONFIG/config.json"
registry_start "$T/reg-denied" htpasswd || fail "htpasswd registry did not start"
kbuild_fails --build-arg "BASE=oci-layout://$LAYOUT:latest" -t "$REGISTRY/kiln/app:1" --push "$CTX"
assert_contains "$(error_text)" "401" "push without credentials"
assert_contains "$(error_text)" "$REGISTRY" "push without credentials"
registry_stop
# With credentials in the docker config, push and pull work.
registry_start "$T/reg-auth" htpasswd || fail "registry did not start"
printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$REGISTRY" \
	"$(printf '%s:%s' "$REGISTRY_USER" "$REGISTRY_PASSWORD" | base64 -w0)" >"$DOCKER_CONFIG/config.json"
repo="$REGISTRY/kiln/app"
kbuild --platform linux/amd64,linux/arm64 --build-arg "BASE=oci-layout://$LAYOUT:latest" \
	-t "$repo:1" --push "$CTX" || fail "htpasswd: push failed: $(tail -3 "$T/progress.json")"
assert_eq "$(skopeo inspect --raw --tls-verify=false --creds "$REGISTRY_USER:$REGISTRY_PASSWORD" \
	"docker://$repo:1" | jq -r '[.manifests[].platform.architecture] | sort | join(",")')" \
	"amd64,arm64" "htpasswd index platforms"
mkdir -p "$T/ctx2-auth"
printf 'FROM %s:1\nRUN cat /arch > /seen\n' "$repo" >"$T/ctx2-auth/Dockerfile"
kbuild --platform linux/arm64 -o "$T/from-auth" "$T/ctx2-auth" || fail "htpasswd: FROM: $(tail -3 "$T/progress.json")"
assert_eq "$(cat "$T/from-auth/seen")" "arm64 aarch64" "htpasswd arm64 FROM"
registry_stop

# A registry that points uploads at another host gets no credentials sent
# there (Docker's rule): the other host must never see Authorization.
: >"$T/evil.log"
python3 "$(dirname "$0")/fake-registry.py" "$T/evil.log" >"$T/fake.port" &
FAKE_PID=$!
CLEANUP_HOOKS+=("kill $FAKE_PID")
for _ in $(seq 50); do [ -s "$T/fake.port" ] && break; sleep 0.1; done
FAKE="127.0.0.1:$(cat "$T/fake.port")"
printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$FAKE" "$(printf 'alice:hunter2' | base64 -w0)" \
	>"$DOCKER_CONFIG/config.json"
"$KILN" build --progress quiet --build-arg "BASE=oci-layout://$LAYOUT:latest" \
	-t "$FAKE/x/y:t" --push "$CTX" 2>/dev/null || true
grep -q "auth=" "$T/evil.log" || fail "the foreign upload host was never contacted (test broken?)"
grep -v "auth=none" "$T/evil.log" && fail "credentials were sent to the foreign upload host"
kill "$FAKE_PID" 2>/dev/null || true

assert_no_mounts
assert_fsck_clean
# A FROM naming a service that is not a registry (issue 14): the build
# error names the host and the status, never the service's answer.
SECRET_BODY="internal-only-$$-$RANDOM"
python3 -c '
import http.server, sys
body = sys.argv[1].encode()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def answer(self):
        self.send_response(404); self.send_header("Content-Length", str(len(body))); self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)
    do_GET = do_HEAD = answer
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()' "$SECRET_BODY" >"$T/notreg.port" &
NOTREG_PID=$!
CLEANUP_HOOKS+=("kill $NOTREG_PID 2>/dev/null")
for _ in $(seq 50); do [ -s "$T/notreg.port" ] && break; sleep 0.1; done
NOTREG="127.0.0.1:$(head -1 "$T/notreg.port")"
mkdir -p "$T/ctx-notreg"
printf 'FROM %s/internal/thing:latest\n' "$NOTREG" >"$T/ctx-notreg/Dockerfile"
kbuild_fails "$T/ctx-notreg"
assert_contains "$(error_text)" "$NOTREG" "the error names the host"
assert_contains "$(error_text)" "404" "the error names the status"
! grep -q "$SECRET_BODY" "$T/progress.json" || fail "a non-registry's answer came back in the error: $(error_text)"
kill "$NOTREG_PID" 2>/dev/null || true

echo "ok: registry push and pull, anonymous and basic auth, no credential leaks, no reflected answers"
