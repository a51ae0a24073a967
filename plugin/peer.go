package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// Roles announced in the log channel handshake.
const (
	helloControl = "control" // control requests (hash, seed, prepare-backup)
	helloPrimary = "primary" // the primary's log channel
)

// Control operations between daemons.
const (
	opHash          = "hash"
	opSeed          = "seed"
	opSeedEnd       = "seed-end"
	opPrepareBackup = "prepare-backup"
	opCancelBackup  = "cancel-backup"
)

// controlRequest is a Control frame from the primary's daemon.
type controlRequest struct {
	Op          string    `json:"op"`
	UUID        string    `json:"uuid,omitempty"`
	Name        string    `json:"name,omitempty"`
	Path        string    `json:"path,omitempty"`
	XML         string    `json:"xml,omitempty"`
	QEMUVersion string    `json:"qemu_version,omitempty"`
	LogVersion  uint32    `json:"log_version,omitempty"`
	Seed        hashReply `json:"seed,omitempty"`
	// Epoch names the pairing: the split-brain lock of this run.
	Epoch string `json:"epoch,omitempty"`
}

// controlReply answers a controlRequest.
type controlReply struct {
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

func peerAddr(cfg ftxml.Config) string {
	return net.JoinHostPort(cfg.PeerAddress, strconv.Itoa(cfg.PeerPort))
}

// peerConn is one TCP connection to or from the peer daemon.
type peerConn struct {
	nc  net.Conn
	c   *logchan.Conn
	seq atomic.Uint64
	// released, when set (the primary's log link), gives the heartbeat's
	// Released counts: the output gates' frames done (outputGates.released).
	released func() []uint64
}

type msgKind int

const (
	msgLog msgKind = iota
	msgAck
	msgHeartbeat
	msgBye
)

type message struct {
	kind   msgKind
	offset uint64
	data   []byte
	ack    logchan.Ack
	text   string
	clean  bool
	// released: a heartbeat's Released counts (logchan.Heartbeat).
	released []uint64
}

func dialPeer(addr string, timeout time.Duration, role, uuid, qemuVer string, logVer uint32) (*peerConn, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	pc := &peerConn{nc: nc, c: logchan.NewConn(nc)}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	if _, err := logchan.ClientHandshake(pc.c, logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: uuid,
		QEMUVersion: qemuVer, LogVersion: logVer, Role: logchan.Role(role)}); err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return pc, nil
}

func dialControl(addr string, timeout time.Duration, uuid, qemuVer string, logVer uint32) (*peerConn, error) {
	return dialPeer(addr, timeout, helloControl, uuid, qemuVer, logVer)
}

func dialLog(addr string, timeout time.Duration, uuid, qemuVer string, logVer uint32) (*peerConn, error) {
	pc, err := dialPeer(addr, timeout, helloPrimary, uuid, qemuVer, logVer)
	if err == nil {
		if tc, ok := pc.nc.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
	}
	return pc, err
}

func (p *peerConn) remote() string { return p.nc.RemoteAddr().String() }

func (p *peerConn) Close() error { return p.nc.Close() }

func (p *peerConn) flush() error { return p.c.Flush() }

// writeTimeout bounds every write on a peer connection: a dead peer must
// never block the primary (DESIGN.md "Backup lost"); a write that times out
// breaks the channel.
const writeTimeout = 2 * time.Second

func (p *peerConn) deadline() { _ = p.nc.SetWriteDeadline(time.Now().Add(writeTimeout)) }

func (p *peerConn) sendLog(off uint64, data []byte) error {
	p.deadline()
	return p.c.WriteLog(off, data)
}

func (p *peerConn) sendAck(off, icount, instr, received uint64) error {
	p.deadline()
	return p.c.WriteAck(logchan.Ack{Offset: off, Executed: icount, Fed: instr, Received: received})
}

func (p *peerConn) sendHeartbeat() error {
	p.deadline()
	h := logchan.Heartbeat{Seq: p.seq.Add(1), SentUnixMs: time.Now().UnixMilli()}
	if p.released != nil {
		h.Released = p.released()
	}
	return p.c.WriteHeartbeat(h)
}

// bye sends an orderly Bye (see encodeBye).
func (p *peerConn) bye(reason string) {
	p.deadline()
	_ = p.c.WriteBye(reason)
}

// closeWrite ends our direction after a Bye, so that everything written
// before it is delivered (a plain close with unread acks pending may reset
// the connection and lose the tail); the reader sees EOF when the peer closes.
func (p *peerConn) closeWrite() {
	_ = p.c.Flush()
	if tc, ok := p.nc.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = p.nc.Close()
}

// recv reads the next log-channel message; unknown or malformed frames are
// errors (the caller drops the connection).
func (p *peerConn) recv() (message, error) {
	f, err := p.c.ReadFrame()
	if err != nil {
		return message{}, err
	}
	t, payload := f.Type, f.Payload
	switch t {
	case logchan.FrameLog:
		off, data, err := logchan.DecodeLog(payload)
		if err != nil {
			return message{}, err
		}
		return message{kind: msgLog, offset: off, data: data}, nil
	case logchan.FrameAck:
		a, err := logchan.DecodeAck(payload)
		if err != nil {
			return message{}, err
		}
		return message{kind: msgAck, ack: a}, nil
	case logchan.FrameHeartbeat:
		h, err := logchan.DecodeHeartbeat(payload)
		if err != nil {
			return message{}, err
		}
		return message{kind: msgHeartbeat, released: h.Released}, nil
	case logchan.FrameBye:
		clean, reason := decodeBye(string(payload))
		return message{kind: msgBye, text: reason, clean: clean}, nil
	default:
		return message{}, fmt.Errorf("unexpected %s frame on the log channel", t)
	}
}

// request sends a control request and decodes the reply's data into out.
func (p *peerConn) request(req controlRequest, out interface{}) error {
	b, _ := json.Marshal(req)
	if err := p.c.WriteFrame(logchan.FrameControl, b); err != nil {
		return err
	}
	return p.readReply(out)
}

func (p *peerConn) readReply(out interface{}) error {
	f, err := p.c.ReadFrame()
	if err != nil {
		return err
	}
	t, payload := f.Type, f.Payload
	if t != logchan.FrameControl {
		return fmt.Errorf("expected a control reply, got a %s frame", t)
	}
	var r controlReply
	if err := json.Unmarshal(payload, &r); err != nil {
		return fmt.Errorf("malformed control reply: %w", err)
	}
	if !r.OK {
		return errors.New(r.Error)
	}
	if out != nil && len(r.Data) > 0 {
		return json.Unmarshal(r.Data, out)
	}
	return nil
}

// seed streams path to the peer in Data frames (1 MiB each), reporting
// progress (bytes done, total).
func (p *peerConn) seed(path string, h hashReply, progress func(done, total int64)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, _ := json.Marshal(controlRequest{Op: opSeed, Path: path, Seed: h})
	if err := p.c.WriteFrame(logchan.FrameControl, b); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	var done int64
	last := time.Now()
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			if err := p.c.WriteFrame(logchan.FrameData, buf[:n]); err != nil {
				return err
			}
			done += int64(n)
			if time.Since(last) > 200*time.Millisecond {
				progress(done, h.Size)
				last = time.Now()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	progress(done, h.Size)
	b, _ = json.Marshal(controlRequest{Op: opSeedEnd, Path: path})
	if err := p.c.WriteFrame(logchan.FrameControl, b); err != nil {
		return err
	}
	return p.readReply(nil)
}

// servePeers accepts connections from peer daemons.
func (d *Daemon) servePeers(l net.Listener) {
	for {
		nc, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go d.servePeer(nc)
	}
}

func (d *Daemon) servePeer(nc net.Conn) {
	pc := &peerConn{nc: nc, c: logchan.NewConn(nc)}
	log := d.log.WithField("peer", nc.RemoteAddr().String())
	if !d.cfg.peerAllowed(nc.RemoteAddr().String()) {
		log.Warn("connection refused: address not in allowed-peers")
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	qemuVer, err := d.qemuVersion()
	if err != nil {
		log.WithError(err).Warn("peer connection refused")
		nc.Close()
		return
	}
	logVer, _ := logchan.LogVersionForQEMU(qemuVer)
	local := logchan.Hello{Protocol: logchan.ProtocolVersion, QEMUVersion: qemuVer, LogVersion: logVer, Role: logchan.RoleBackup}
	hello, err := logchan.ServerHandshake(pc.c, local, func(h logchan.Hello) error {
		if h.Role != helloControl && h.Role != helloPrimary {
			return fmt.Errorf("unknown role %q", h.Role)
		}
		return nil
	})
	_ = nc.SetDeadline(time.Time{})
	if err != nil {
		log.WithError(err).Warn("peer handshake refused")
		nc.Close()
		return
	}
	switch string(hello.Role) {
	case helloPrimary:
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		c := d.lookup(hello.DomainUUID)
		if c == nil || c.role != ftxml.RoleBackup {
			log.Warnf("log channel for %s, which has no armed backup here", hello.DomainUUID)
			pc.bye("no backup armed for " + hello.DomainUUID)
			nc.Close()
			return
		}
		c.runBackupLog(pc)
	case helloControl:
		d.serveControlConn(pc)
	}
}

// serveControlConn answers control requests until the peer closes.
func (d *Daemon) serveControlConn(pc *peerConn) {
	defer pc.Close()
	var seed *seedWriter
	defer func() {
		if seed != nil {
			seed.abort()
		}
	}()
	reply := func(data interface{}, err error) error {
		r := controlReply{OK: err == nil}
		if err != nil {
			r.Error = err.Error()
		} else if data != nil {
			r.Data, _ = json.Marshal(data)
		}
		b, _ := json.Marshal(r)
		return pc.c.WriteFrame(logchan.FrameControl, b)
	}
	for {
		f, err := pc.c.ReadFrame()
		if err != nil {
			return
		}
		t, payload := f.Type, f.Payload
		if t == logchan.FrameData {
			if seed == nil {
				return
			}
			if _, err := seed.Write(payload); err != nil {
				_ = reply(nil, err)
				return
			}
			continue
		}
		if t != logchan.FrameControl {
			return
		}
		var req controlRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			_ = reply(nil, fmt.Errorf("malformed control request: %w", err))
			return
		}
		switch req.Op {
		case opHash:
			h, err := hashFile(req.Path)
			err = reply(h, err)
			if err != nil {
				return
			}
		case opSeed:
			if !d.cfg.seedAllowed(req.Path) {
				_ = reply(nil, fmt.Errorf("the backup host does not accept disk copies at %s: put the disk under one of %v, or add its directory to seed-dirs in %s", req.Path, d.cfg.SeedDirs, DefaultConfigPath))
				return
			}
			if seed != nil {
				seed.abort()
			}
			seed, err = newSeedWriter(req.Path, req.Seed)
			if err != nil {
				_ = reply(nil, err)
				return
			}
			d.log.Infof("receiving a seed copy of %s (%d bytes)", req.Path, req.Seed.Size)
		case opSeedEnd:
			if seed == nil {
				_ = reply(nil, errors.New("seed-end without seed"))
				return
			}
			err := seed.commit()
			seed = nil
			if reply(nil, err) != nil {
				return
			}
		case opPrepareBackup:
			host, _, _ := net.SplitHostPort(pc.remote())
			if reply(nil, d.prepareBackup(req, host)) != nil {
				return
			}
		case opCancelBackup:
			d.cancelBackup(req.UUID)
			if reply(nil, nil) != nil {
				return
			}
		default:
			_ = reply(nil, fmt.Errorf("unknown control op %q", req.Op))
			return
		}
	}
}
