#!/bin/sh
# Install the programs from Debian's packages that the test suite runs as
# real peers, when they are missing:
#
#   pypy3           the PyPy leg of the suite (.ci/pypy.sh)
#   nghttp2-client  nghttp, a second HTTP/2 client for the h2 tests
#   systemd         systemd-analyze, which verifies the production page's unit
#   logrotate       which reads the production page's logrotate file
#   etcd-server     etcd, the registry the etcd source and fleet tests watch
#   etcd-client     etcdctl, used by the fleet page's recorded session
#   haproxy         the PROXY protocol peer (in front of and behind lbproxy)
#   nginx           the reference the access log test compares lines with
#   chromium        the headless browser the status page's end-to-end test
#   chromium-driver drives (chromedriver, through selenium)
#
#   sh .ci/tools.sh              # all of them
#   sh .ci/tools.sh pypy3        # just these packages
#
# apt-get needs root; without it the missing programs are named and the
# script fails, so that no test is skipped in silence.
set -eu
if [ $# -eq 0 ]; then
    set -- pypy3 nghttp2-client systemd logrotate etcd-server etcd-client haproxy nginx chromium chromium-driver
fi
missing=""
for package in "$@"; do
    case $package in
        nghttp2-client) program=nghttp ;;
        systemd) program=systemd-analyze ;;
        etcd-server) program=etcd ;;
        etcd-client) program=etcdctl ;;
        haproxy) program=/usr/sbin/haproxy ;;
        nginx) program=/usr/sbin/nginx ;;
        chromium-driver) program=chromedriver ;;
        *) program=$package ;;
    esac
    command -v "$program" >/dev/null 2>&1 || missing="$missing $package"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
    echo "missing:$missing (apt-get install$missing)" >&2
    exit 1
fi
