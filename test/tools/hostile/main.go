// Command hostile plays a hostile peer against a backup host's libvirt-ftd
// (make e2e-hostile, issue 11). From a third host it tries what the peer
// port must refuse and prints one line per attempt:
//
//	attack=NAME result=refused|dropped|accepted detail="..."
//
// refused: the daemon answered with an error (or a bye) that gives the
// expected reason; dropped: it closed the connection; accepted: it did
// what was asked, did not answer within 10 s, or refused for another
// reason than the check under test (a failure either way). The exit code
// is 1 if any attempt was accepted.
//
//	hostile -addr 10.250.0.2:7480 -ca ca.pem -cert c.pem -key c-key.pem \
//	  -uuid PROTECTED-UUID -xml domain.xml -victim /var/lib/libvirt/images/victim.qcow2 \
//	  -link /var/lib/libvirt/images/lnk -arbiter "etcd http://10.250.0.50:2379 /libvirt-ft"
//
// With -fake-backup it plays a lying backup host instead (fakebackup.go):
//
//	hostile -fake-backup 10.250.0.2:7480 -ca ca.pem -cert b.pem -key b-key.pem -qemu-version 7.2.18
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

var (
	addr       = flag.String("addr", "", "the backup host's peer port (host:port)")
	caFile     = flag.String("ca", "", "the CA certificate (PEM)")
	cert       = flag.String("cert", "", "a certificate the CA signed for this host (PEM)")
	key        = flag.String("key", "", "its key (PEM)")
	uuid       = flag.String("uuid", "", "the protected domain's UUID")
	xmlFile    = flag.String("xml", "", "a domain XML (the protected domain's user definition) to mutate into backups to arm")
	victim     = flag.String("victim", "", "a disk image of another domain on the backup host")
	link       = flag.String("link", "", "a symbolic link to /etc under seed-dirs on the backup host")
	victimUUID = flag.String("victim-uuid", "", "the UUID of the domain that owns -victim")
	disk       = flag.String("disk", "", "the protected domain's disk image on the backup host")
	arbiter    = flag.String("arbiter", "", "the arbiter name both daemons use (prepare-backup's arbiter)")
	flood      = flag.Int("flood", 200, "connections that announce a large frame and stall")
	hold       = flag.Duration("hold", 20*time.Second, "how long the flood's connections stall")
	fakeListen = flag.String("fake-backup", "", "play a lying backup host on this address (host:port) instead: -cert/-key are the backup host's")
	fakeQEMU   = flag.String("qemu-version", "", "-fake-backup: the QEMU version to claim (the primary's)")
	fakeWait   = flag.Duration("timeout", 5*time.Minute, "-fake-backup: how long to wait for the primary")
)

var accepted bool

func report(name, result, detail string) {
	if result == "accepted" {
		accepted = true
	}
	fmt.Printf("attack=%s result=%s detail=%q\n", name, result, oneLine(detail))
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func main() {
	flag.Parse()
	if *fakeListen != "" {
		fakeBackup(*fakeListen, *fakeQEMU, *fakeWait)
		if accepted {
			os.Exit(1)
		}
		return
	}
	pool, pair := loadPKI()
	host, _, _ := net.SplitHostPort(*addr)
	withCert := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: host, MinVersion: tls.VersionTLS13}
	noCert := &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS13}

	// 1. No client certificate: refused at the TLS handshake (TLS 1.3
	// reports the server's refusal at the first read).
	if c, err := dialTLS(noCert); err != nil {
		report("no-certificate", "refused", err.Error())
	} else {
		lc := logchan.NewConn(c)
		_, err := logchan.ClientHandshake(lc, logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: *uuid, Role: logchan.RoleControl})
		result := "accepted"
		if err != nil {
			result = "refused"
		}
		report("no-certificate", result, fmt.Sprint(err))
		c.Close()
	}

	// The server's QEMU and log versions, from its answer to a probe.
	qemuVer, logVer := probe(withCert)

	hello := func(u string, role logchan.Role) logchan.Hello {
		return logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: u, QEMUVersion: qemuVer, LogVersion: logVer, Role: role}
	}
	// refusal reports err as refused if it carries want, else accepted (a
	// refusal for another reason does not show the check works).
	refusal := func(name string, err error, want string) {
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			report(name, "accepted", "no answer within 10 s: "+err.Error())
		case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET):
			report(name, "dropped", err.Error())
		case strings.Contains(err.Error(), want):
			report(name, "refused", err.Error())
		default:
			report(name, "accepted", "refused for another reason than "+strconv.Quote(want)+": "+err.Error())
		}
	}
	// attempt opens a control connection for domain u and runs try on it
	// within 10 s; an error is judged by refusal, success is accepted.
	attempt := func(name, u, want string, try func(*logchan.Conn) (string, error)) {
		c, lc, err := open(withCert, hello(u, logchan.RoleControl))
		if err != nil {
			refusal(name, err, want)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		done, err := try(lc)
		if err != nil {
			refusal(name, err, want)
			return
		}
		report(name, "accepted", done)
	}
	control := func(name string, u string, req logchan.ControlRequest, want string) {
		attempt(name, u, want, func(lc *logchan.Conn) (string, error) {
			var out any
			err := lc.Request(req, &out)
			return fmt.Sprint(out), err
		})
	}
	seed := func(name, u, path, want string) {
		attempt(name, u, want, func(lc *logchan.Conn) (string, error) {
			data := []byte("hostile bytes\n")
			return "wrote " + path, lc.Seed(path, digest(data), strings.NewReader(string(data)), nil)
		})
	}
	deltaSeed := func(name, u, path, want string) {
		attempt(name, u, want, func(lc *logchan.Conn) (string, error) {
			data := []byte("hostile bytes\n")
			sum := sha256.Sum256(data)
			l := logchan.BlockList{Exists: true, Size: int64(len(data)), BlockSize: logchan.MinSeedBlock, Hashes: sum[:]}
			return "wrote " + path, lc.SeedBlocks(path, l, []int64{0}, strings.NewReader(string(data)), nil)
		})
	}

	// 2. Hashing what is not a disk of the domain.
	control("hash-dev-zero", *uuid, logchan.ControlRequest{Op: logchan.OpHash, Path: "/dev/zero"}, "outside seed-dirs")
	control("hash-etc-shadow", *uuid, logchan.ControlRequest{Op: logchan.OpHash, Path: "/etc/shadow"}, "outside seed-dirs")
	control("blocks-etc-shadow", *uuid, logchan.ControlRequest{Op: logchan.OpBlocks, Path: "/etc/shadow", Blocks: &logchan.BlockList{BlockSize: logchan.MinSeedBlock}}, "outside seed-dirs")
	if *link != "" {
		control("hash-through-symlink", *uuid, logchan.ControlRequest{Op: logchan.OpHash, Path: *link + "/shadow"}, "symbolic link")
	}
	// 3. Seeding over another domain's image (also under that domain's
	// own UUID), over the running backup's disk, or through a link.
	if *victim != "" {
		seed("seed-other-domains-image", *uuid, *victim, "is a disk of domain")
		deltaSeed("delta-seed-other-domains-image", *uuid, *victim, "is a disk of domain")
		if *victimUUID != "" {
			seed("seed-victim-under-its-uuid", *victimUUID, *victim, "is a disk of domain")
		}
	}
	if *disk != "" {
		// (The running backup is a domain whose peer is not this host.)
		seed("seed-running-backups-disk", *uuid, *disk, "is a disk of domain")
		// A delta seed whose block list is malformed, to a new file
		// under seed-dirs for a domain the backup host does not know:
		// refused, and the daemon stays up (hostile.sh checks it runs
		// afterwards).
		bad := logchan.BlockList{Exists: true, Size: 1, BlockSize: 4096, Hashes: make([]byte, 32)}
		control("delta-seed-bad-block-size", "6b0e2f6a-7c1d-4e3f-9a8b-1c2d3e4f5a6c", logchan.ControlRequest{Op: logchan.OpSeed,
			Path: filepath.Join(filepath.Dir(*disk), "libvirt-ft-hostile-delta.qcow2"), Blocks: &bad}, "block_size")
	}
	if *link != "" {
		seed("seed-through-symlink", *uuid, *link+"/libvirt-ft-hostile", "symbolic link")
		// ".." after the link: the kernel resolves it from the link's
		// target (/etc/.. is /), where a lexical check sees seed-dirs.
		seed("seed-dotdot-after-symlink", *uuid, *link+"/../libvirt-ft-hostile", "clean form")
		control("blocks-dotdot-after-symlink", *uuid, logchan.ControlRequest{Op: logchan.OpBlocks, Path: *link + "/../etc/shadow",
			Blocks: &logchan.BlockList{BlockSize: logchan.MinSeedBlock}}, "clean form")
	}
	// 4. Arming backups that would run what the peer says.
	if *xmlFile != "" {
		base, err := os.ReadFile(*xmlFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hostile: -xml:", err)
			os.Exit(2)
		}
		const u2 = "6b0e2f6a-7c1d-4e3f-9a8b-1c2d3e4f5a6b"
		// The backups armed below name a disk of their own (no file yet),
		// so that the check under test is the one that refuses.
		own := string(base)
		if *disk != "" {
			own = strings.Replace(own, *disk, strings.TrimSuffix(*disk, ".qcow2")+"-hostile.qcow2", 1)
		}
		arm := func(name, edit, want string) {
			x := strings.Replace(own, "</name>", "-hostile</name>\n  <uuid>"+u2+"</uuid>", 1)
			x = strings.Replace(x, "</domain>", edit+"</domain>", 1)
			control(name, u2, logchan.ControlRequest{Op: logchan.OpPrepareBackup, UUID: u2, Name: "hostile", XML: x,
				QEMUVersion: qemuVer, LogVersion: logVer, Epoch: "hostile", Arbiter: *arbiter}, want)
		}
		arm("arm-qemu-commandline", `<qemu:commandline xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><qemu:arg value="-chardev"/><qemu:arg value="file,id=x,path=/etc/shadow"/></qemu:commandline>`, "/domain/qemu:commandline")
		arm("arm-root-seclabel", `<seclabel type="static" model="dac" relabel="no"><label>0:0</label></seclabel>`, "/domain/seclabel")
		// A backup of another QEMU build, or of one not named: its
		// replay would diverge or crawl.
		for _, c := range []struct{ name, build, want string }{
			{"arm-other-qemu-build", "QEMU emulator version 7.2.0 (hostile), sha256 0000000000000000", "QEMU builds differ"},
			{"arm-no-qemu-build", "", "sent no emulator_build"},
		} {
			x := strings.Replace(own, "</name>", "-hostile</name>\n  <uuid>"+u2+"</uuid>", 1)
			// As a primary's daemon sends it: generated for record.
			if gx, _, err := ftxml.NeedsRewrite(x); err == nil {
				x = gx
			}
			control(c.name, u2, logchan.ControlRequest{Op: logchan.OpPrepareBackup, UUID: u2, Name: "hostile", XML: x,
				QEMUVersion: qemuVer, LogVersion: logVer, EmulatorBuild: c.build, Epoch: "hostile", Arbiter: *arbiter}, c.want)
		}
		// Arming a backup that would replay into another domain's image.
		if *victim != "" && *disk != "" {
			x := strings.Replace(string(base), "</name>", "-hostile</name>\n  <uuid>"+u2+"</uuid>", 1)
			x = strings.Replace(x, *disk, *victim, 1)
			control("arm-on-other-domains-image", u2, logchan.ControlRequest{Op: logchan.OpPrepareBackup, UUID: u2, Name: "hostile", XML: x,
				QEMUVersion: qemuVer, LogVersion: logVer, Epoch: "hostile", Arbiter: *arbiter}, "is a disk of domain")
		}
		// Arming over the protected domain's running backup.
		x := strings.Replace(string(base), "</name>", "</name>\n  <uuid>"+*uuid+"</uuid>", 1)
		control("arm-over-the-running-backup", *uuid, logchan.ControlRequest{Op: logchan.OpPrepareBackup, UUID: *uuid, Name: "ftdemo", XML: x,
			QEMUVersion: qemuVer, LogVersion: logVer, Epoch: "hostile", Arbiter: *arbiter}, "armed by")
	}
	// 5. A UUID that is a path; an epoch that is a path.
	control("uuid-dotdot", "../../../root/.ssh", logchan.ControlRequest{Op: logchan.OpHash, Path: "/etc/shadow"}, "canonical form")
	control("epoch-dotdot", *uuid, logchan.ControlRequest{Op: logchan.OpPrepareBackup, UUID: *uuid, Name: "x", XML: "<domain/>",
		QEMUVersion: qemuVer, LogVersion: logVer, Epoch: "../../x", Arbiter: *arbiter}, "epoch")
	// A cancel of the protected domain's backup from a host that did not
	// arm it: answered ok and ignored (the e2e checks that replication
	// goes on).
	if c, lc, err := open(withCert, hello(*uuid, logchan.RoleControl)); err == nil {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		err := lc.Request(logchan.ControlRequest{Op: logchan.OpCancelBackup, UUID: *uuid}, nil)
		report("cancel-the-running-backup", "sent", fmt.Sprint("answer: ", err))
		c.Close()
	}
	// 6. A second log channel for the protected domain.
	if c, lc, err := open(withCert, hello(*uuid, logchan.RolePrimary)); err != nil {
		report("second-log-channel", "refused", err.Error())
	} else {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := lc.Recv()
		var ne net.Error
		switch {
		case err == nil && m.Kind == logchan.MsgBye && strings.Contains(m.Bye.Reason, "armed by another host"):
			report("second-log-channel", "refused", "bye: "+m.Bye.Reason)
		case errors.As(err, &ne) && ne.Timeout():
			report("second-log-channel", "accepted", "the channel was accepted and stays open")
		case err != nil:
			report("second-log-channel", "dropped", err.Error())
		default:
			report("second-log-channel", "accepted", fmt.Sprintf("got a %v frame", m.Kind))
		}
		c.Close()
	}
	// 7. Malformed frames: each must drop its connection only.
	raw := func(name string, hdr []byte) {
		c, err := dialTLS(withCert)
		if err != nil {
			report(name, "refused", err.Error())
			return
		}
		defer c.Close()
		_, _ = c.Write(hdr)
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, err = io.ReadAll(c)
		if err == nil || errors.Is(err, io.EOF) {
			report(name, "dropped", "the daemon closed the connection")
			return
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			report(name, "accepted", "the connection stayed open 15 s")
			return
		}
		report(name, "dropped", err.Error())
	}
	raw("frame-huge-length", binary.BigEndian.AppendUint32([]byte{byte(logchan.FrameHello)}, 0xfffffff0))
	raw("frame-unknown-type", binary.BigEndian.AppendUint32([]byte{0x7f}, 16))
	bad := hello(*uuid, logchan.RoleControl)
	bad.Protocol = 99
	if c, _, err := open(withCert, bad); err != nil {
		refusal("wrong-protocol-version", err, "protocol")
	} else {
		report("wrong-protocol-version", "accepted", "handshake completed")
		c.Close()
	}
	// 8. Many connections that announce a large frame and stall.
	floodConns(withCert)
	if accepted {
		os.Exit(1)
	}
}

func dialTLS(cfg *tls.Config) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", *addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// open dials and runs the handshake with h.
func open(cfg *tls.Config, h logchan.Hello) (net.Conn, *logchan.Conn, error) {
	c, err := dialTLS(cfg)
	if err != nil {
		return nil, nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	lc := logchan.NewConn(c)
	if _, err := logchan.ClientHandshake(lc, h); err != nil {
		c.Close()
		return nil, nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, lc, nil
}

// probe learns the server's QEMU and log versions from its HelloReply.
func probe(cfg *tls.Config) (string, uint32) {
	c, err := dialTLS(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile: probe:", err)
		os.Exit(2)
	}
	defer c.Close()
	lc := logchan.NewConn(c)
	rep, _ := logchan.ClientHandshake(lc, logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: *uuid, QEMUVersion: "7.2.0", Role: logchan.RoleControl})
	return rep.Hello.QEMUVersion, rep.Hello.LogVersion
}

func digest(b []byte) logchan.FileDigest {
	sum := sha256.Sum256(b)
	return logchan.FileDigest{Exists: true, Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:])}
}

// floodConns opens -flood connections at once, each announcing a 4 MiB Log
// frame after its handshake and sending nothing more, holds them for
// -hold, and reports how many the daemon let in and how many it closed.
func floodConns(cfg *tls.Config) {
	var mu sync.Mutex
	var opened, refused, closedEarly int
	var wg sync.WaitGroup
	for i := 0; i < *flood; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialTLS(cfg)
			if err != nil {
				mu.Lock()
				refused++
				mu.Unlock()
				return
			}
			defer c.Close()
			_, _ = c.Write(binary.BigEndian.AppendUint32([]byte{byte(logchan.FrameLog)}, logchan.MaxFrameSize))
			mu.Lock()
			opened++
			mu.Unlock()
			_ = c.SetReadDeadline(time.Now().Add(*hold))
			if _, err := io.ReadAll(c); err == nil || errors.Is(err, io.EOF) {
				mu.Lock()
				closedEarly++
				mu.Unlock()
			} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				mu.Lock()
				closedEarly++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	result := "dropped"
	if opened-closedEarly > 64 {
		result = "accepted"
	}
	report("flood-stalled-frames", result, fmt.Sprintf("%d connections: %d refused at connect or TLS, %d opened, %d of them closed by the daemon within %s", *flood, refused, opened, closedEarly, *hold))
}

// loadPKI loads -ca and the -cert/-key pair; it exits 2 if it cannot.
func loadPKI() (*x509.CertPool, tls.Certificate) {
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(*caFile)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		fmt.Fprintln(os.Stderr, "hostile: -ca:", err)
		os.Exit(2)
	}
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile: -cert/-key:", err)
		os.Exit(2)
	}
	return pool, pair
}
