# libvirt-ft — see README.md. Everything here runs as root on Debian 12.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := $(CURDIR)/bin
GUEST := $(CURDIR)/test/guest/out
LAB := test/lab/lab.sh
TRIALS ?= 1
CYCLES ?= 3
PROTECT ?= auto
REPROTECT_MODES ?= qemu backup host
FTD_KILL ?= 0

# Debian packages: build (cgo libvirt), lab (QEMU, libvirt, namespaces), guest.
PACKAGES := gcc pkg-config libvirt-dev libvirt-daemon-system libvirt-clients \
	libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils busybox-static cpio \
	iproute2 kmod socat tcpdump iptables ca-certificates libxml2-utils etcd-server jq openssl curl

.PHONY: all setup build unit apparmor-check e2e-install qemu-ft qemu-ft-bg e2e e2e-distro e2e-admin e2e-faults e2e-hostile e2e-reprotect e2e-protect-plain bench-cpu bench-disk e2e-failover e2e-switchover e2e-tcp e2e-backup-loss e2e-network e2e-libvirtd-restart soak-tcp e2e-determinism test demo bench fuzz package lab-up lab-down guest clean fmt vet

all: build

setup:
	@if ! dpkg -s $(PACKAGES) >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(PACKAGES) $$(cat test/lab/packages.txt 2>/dev/null); \
	fi
	@command -v $(GO) >/dev/null || { echo "Go is missing: install Go 1.26 (/usr/local/go)"; exit 1; }

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ ./cmd/...
	$(GO) build -o $(BIN)/diskcheck ./test/tools/diskcheck
	$(GO) build -o $(BIN)/tcpcheck ./test/tools/tcpcheck
	$(GO) build -o $(BIN)/rxcheck ./test/tools/rxcheck
	$(GO) build -o $(BIN)/rrdump ./test/tools/rrdump
	$(GO) build -o $(BIN)/gaterelay ./test/tools/gaterelay
	$(GO) build -o $(BIN)/hostile ./test/tools/hostile
	$(GO) build -o $(BIN)/fdstore ./test/tools/fdstore
	$(GO) build -o $(BIN)/reprotect ./test/tools/reprotect
	$(GO) build -o $(BIN)/trickle ./test/tools/trickle

guest:
	test/guest/build.sh $(GUEST)

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 ./...

# The failover, switchover and TCP (output rule) trials run on the patched
# QEMU (qemu-ft): stock 7.2 cannot go live reliably and its virtio-net is
# not deterministic under record/replay (packaging/qemu/README.md).
e2e: build guest qemu-ft-bg
	test/e2e/run.sh replication refusals backup-loss
	packaging/qemu/build.sh $(FTQEMU)
	$(MAKE) --no-print-directory package
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 TRIALS=1 CYCLES=1 REPROTECT_MODES="qemu" FTD_KILL=1 FROM=plain FEED=trickle FAULTS="ftd-kill-a restart-a restart-b qemu-hang-a" test/e2e/run.sh determinism rr-migrate reprotect protect-plain failover switchover golive-stall tcp divergence network libvirtd-restart hostile faults install

# The packages installed on this machine, the lab running the installed
# files (replication, one failover), then purged: nothing left
# (test/e2e/install.sh). Refuses when libvirt-ft is installed already.
e2e-install: build guest qemu-ft package
	test/e2e/run.sh install

# QEMU 7.2 with packaging/qemu's end-of-log replay patch (stock 7.2 cannot
# go live reliably: see packaging/qemu/README.md). About 7 min to build.
FTQEMU ?= /var/tmp/libvirt-ft-qemu
qemu-ft:
	packaging/qemu/build.sh $(FTQEMU)

# The same build started in the background at idle priority: `make test`
# overlaps it with the unit tests and the stock-QEMU tests, and waits for
# it before the tests on the patched QEMU (packaging/qemu/build.sh).
qemu-ft-bg:
	packaging/qemu/build.sh --background $(FTQEMU)

# Failover trials (issue 3) on the patched QEMU, on both hosts.
e2e-failover: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 TRIALS=$(TRIALS) test/e2e/run.sh failover

# Faults of libvirt-ft's own parts and what it depends on (issue 11): a
# row per fault. FAULTS="ftd-kill-a ..." picks some (test/e2e/faults.sh).
e2e-faults: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 FAULTS="$(FAULTS)" test/e2e/run.sh faults

# A hostile peer with and without a valid certificate against the backup
# host (issue 11; test/e2e/hostile.sh).
e2e-hostile: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/e2e/run.sh hostile

# Re-protection (issue 13): CYCLES failures, in turn kill -9 of the
# primary's QEMU, of the backup's, and the primary's host torn down and
# revived (REPROTECT_MODES), each followed by the VM's re-protection onto
# the other host (PROTECT=auto: by libvirt-ftd; manual: virt-ft protect),
# TCP clients connected throughout.
e2e-reprotect: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 CYCLES=$(CYCLES) PROTECT=$(PROTECT) REPROTECT_MODES="$(REPROTECT_MODES)" FTD_KILL=$(FTD_KILL) test/e2e/run.sh reprotect

# virt-ft protect of a running VM started without the ft element: it moves
# to host B, which re-protects it onto host A; then a failover.
e2e-protect-plain: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/e2e/run.sh protect-plain

e2e-switchover: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 TRIALS=$(TRIALS) test/e2e/run.sh switchover

# Output rule (issue 4): TCP clients survive failover. GATE=off turns the
# output gate off to show that the harness can fail.
GATE ?= on
e2e-tcp: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 TRIALS=$(TRIALS) GATE=$(GATE) test/e2e/run.sh tcp

# TCP load against a protected guest for DURATION (no failover), checking
# every few seconds that the backup's replay advances and its console follows
# (issue 9). DURATION=20m is the acceptance run.
DURATION ?= 2m
soak-tcp: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 DURATION=$(DURATION) test/e2e/run.sh soak-tcp

# Record the guest under TCP load into a file, replay it (through a FIFO fed
# in random chunks, as FIFO B is: FEED=trickle; FEED=file reads the file), require the same
# icount and console (issue 9). EMULATOR= another QEMU to check it.
e2e-determinism: build guest qemu-ft
	EMULATOR=$${EMULATOR:-$(FTQEMU)/bin/qemu-system-x86_64} FEED=$${FEED:-trickle} test/e2e/run.sh determinism

e2e-backup-loss: build guest
	test/e2e/run.sh backup-loss

# TCP traffic to a protected guest, then a clean shutdown the backup follows
# (needs the patched QEMU's deterministic virtio-net).
e2e-network: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/e2e/run.sh network

# A real distribution guest (Debian 12 with systemd, built by
# test/guest/distro/build.sh with debootstrap: about 3 min the first time)
# through an admin's everyday operations: a guest agent refused, start,
# virsh shutdown, an in-step restart, virsh reset, virsh reboot, suspend
# and resume, snapshots refused, virsh destroy, a failover with a TCP
# client. About 12 min; not in make test (its time budget). e2e-admin is
# the same (issue 14's name for it).
e2e-distro e2e-admin: build guest qemu-ft
	EMULATOR=$${EMULATOR:-$(FTQEMU)/bin/qemu-system-x86_64} test/e2e/run.sh distro

e2e-libvirtd-restart: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/e2e/run.sh libvirtd-restart

test: setup build guest qemu-ft-bg vet unit apparmor-check e2e

# The AppArmor rules the packages ship, parsed with libvirtd's, virtqemud's
# and a domain's profile (nothing is loaded into the kernel).
apparmor-check:
	packaging/apparmor/check.sh build/apparmor

demo: setup build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/demo.sh

# Go benchmarks (codec, output gate), the CPU figures of record/replay
# (test/bench/cpu.sh: boot to ready, QEMU alone and in the lab, pinned and
# unpinned; the log by kind; perf), then the output gate's network figures
# in the lab (test/bench/net.sh: RTT, bulk rx/tx, log bandwidth; gate on,
# off, unprotected). Results: BENCHMARKS.md.
bench: build guest qemu-ft
	$(GO) test -run '^$$' -bench . -benchmem ./logchan/ ./plugin/gate/
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/bench/cpu.sh
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/bench/net.sh

# The CPU figures alone (issue 12): RUNS=N, LAB=0 (QEMU alone), ALONE=0 (the lab rows only), PERF=0.
bench-cpu: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/bench/cpu.sh

# Disk work at a protected start (issue 13): writes a 10 GiB qcow2 with
# DATA_GIB (default 4) GiB of data on each lab host; drops the page cache.
bench-disk: build guest qemu-ft
	EMULATOR=$(FTQEMU)/bin/qemu-system-x86_64 test/bench/disk.sh

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecoder -fuzztime 60s ./logchan/
	$(GO) test -run '^$$' -fuzz FuzzRecv -fuzztime 60s ./logchan/

lab-up: build guest
	HOOK_BIN=$(BIN)/libvirt-ft-hook $(LAB) up

lab-down:
	$(LAB) down

# deb and rpm with nfpm (fetched through the Go module proxy).
NFPM := github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
VERSION ?= 0.1.0
package: build
	@mkdir -p build
	$(BIN)/virt-ft completion bash > build/virt-ft.bash
	VERSION=$(VERSION) $(GO) run $(NFPM) package -f packaging/nfpm.yaml -p deb -t build/
	VERSION=$(VERSION) $(GO) run $(NFPM) package -f packaging/nfpm.yaml -p rpm -t build/
	@if [ -x $(FTQEMU)/bin/qemu-system-x86_64 ]; then \
		mkdir -p build/qemu && \
		strip --strip-unneeded -o build/qemu/qemu-system-x86_64 $(FTQEMU)/bin/qemu-system-x86_64 && \
		VERSION=$(VERSION) $(GO) run $(NFPM) package -f packaging/nfpm-qemu.yaml -p deb -t build/ && \
		test "$$(dpkg-deb -c build/libvirt-ft-qemu_$(VERSION)_amd64.deb | grep -c '^l.* -> \.\./')" = 3 || \
		{ echo "package: libvirt-ft-qemu's three firmware links are not symbolic links"; exit 1; }; \
	else echo "package: no $(FTQEMU) (make qemu-ft): libvirt-ft-qemu not built"; fi

clean:
	rm -rf $(BIN) build
