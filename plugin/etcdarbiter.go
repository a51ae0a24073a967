package plugin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// etcdArbiter is the Arbiter on an etcd witness (go.etcd.io/etcd/client/v3):
// the claim of (uuid, epoch) is the key <prefix>/claims/<uuid>/<epoch>,
// created in one transaction if it does not exist (CreateRevision = 0), with
// this daemon's identity as its value. Exactly one of the two daemons
// creates it; asking again is idempotent for the holder. A claim has no
// lease: it stays until a later pairing of the domain Forgets it, so a
// winner that crashes never lets the loser win the same epoch. Every call
// is bounded by timeout: an unreachable etcd is an error, never a wait.
type etcdArbiter struct {
	cli     *clientv3.Client
	prefix  string
	me      string
	timeout time.Duration
	log     logrus.FieldLogger
}

// newEtcdArbiter connects lazily: creating it never blocks.
func newEtcdArbiter(cfg EtcdConfig, me string, timeout time.Duration, log logrus.FieldLogger) (*etcdArbiter, error) {
	cc := clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: timeout, Logger: zap.NewNop()}
	if cfg.CACert != "" || cfg.ClientCert != "" {
		t, err := etcdTLS(cfg)
		if err != nil {
			return nil, err
		}
		cc.TLS = t
	}
	if cfg.Username != "" {
		pw, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("arbiter-etcd: password-file: %w", err)
		}
		cc.Username, cc.Password = cfg.Username, strings.TrimSpace(string(pw))
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("arbiter-etcd %v: %w", cfg.Endpoints, err)
	}
	return &etcdArbiter{cli: cli, prefix: strings.TrimSuffix(cfg.Prefix, "/"), me: me,
		timeout: timeout, log: log}, nil
}

// etcdTLS is the TLS configuration for arbiter-etcd's ca-cert,
// client-cert and client-key. Errors name the key.
func etcdTLS(cfg EtcdConfig) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("arbiter-etcd: ca-cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("arbiter-etcd: ca-cert %s holds no PEM certificate", cfg.CACert)
		}
		t.RootCAs = pool
	}
	if cfg.ClientCert != "" || cfg.ClientKey != "" {
		pair, err := tls.LoadX509KeyPair(cfg.ClientCert, cfg.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("arbiter-etcd: client-cert %s / client-key %s: %w", cfg.ClientCert, cfg.ClientKey, err)
		}
		t.Certificates = []tls.Certificate{pair}
	}
	return t, nil
}

func (a *etcdArbiter) key(uuid, epoch string) string {
	return path.Join(a.prefix, "claims", uuid, epoch)
}

func (a *etcdArbiter) current(uuid string) string {
	return path.Join(a.prefix, "current", uuid)
}

func (a *etcdArbiter) Acquire(uuid, epoch string) (bool, error) {
	if !validEpoch(epoch) || !logchan.ValidUUID(uuid) {
		return false, fmt.Errorf("arbiter: bad claim %q/%q", uuid, epoch)
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	k, cur := a.key(uuid, epoch), a.current(uuid)
	// The domain's current epoch (Forget): a claim of another one loses.
	// Its revision goes into the transaction, so a Forget in between
	// makes the claim fail and be asked again.
	g, err := a.cli.Get(ctx, cur)
	if err != nil {
		return false, fmt.Errorf("arbiter: etcd: reading %s: %w", cur, err)
	}
	var curRev int64
	if len(g.Kvs) > 0 {
		if string(g.Kvs[0].Value) != epoch {
			return false, nil
		}
		curRev = g.Kvs[0].ModRevision
	}
	// A won claim must outlive its winner's daemon (a crash, a restart,
	// losing etcd): it carries no lease, and only Forget of a later
	// pairing removes it. Otherwise the loser's next retry could win the
	// same epoch while the winner's VM runs.
	resp, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0), clientv3.Compare(clientv3.ModRevision(cur), "=", curRev)).
		Then(clientv3.OpPut(k, a.me)).
		Else(clientv3.OpGet(k), clientv3.OpGet(cur)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("arbiter: etcd: claiming %s: %w", k, err)
	}
	if resp.Succeeded {
		return true, nil
	}
	if len(resp.Responses) < 2 {
		return false, errors.New("arbiter: etcd: short transaction reply; retrying")
	}
	if c := resp.Responses[1].GetResponseRange().Kvs; (len(c) > 0 && string(c[0].Value) != epoch) || (len(c) == 0 && curRev != 0) {
		return false, nil // forgotten meanwhile
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		// The current epoch was written between the two reads:
		// neither won nor lost; the core asks again.
		return false, errors.New("arbiter: etcd: the domain's current epoch changed while claiming; retrying")
	}
	return string(kvs[0].Value) == a.me, nil
}

// Forget writes uuid's current epoch, then deletes the claims of its other
// epochs.
func (a *etcdArbiter) Forget(uuid, epoch string) error {
	if !validEpoch(epoch) || !logchan.ValidUUID(uuid) {
		return fmt.Errorf("arbiter: bad epoch %q/%q", uuid, epoch)
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	cur := a.current(uuid)
	// Never go back: compare-and-set on the current key's revision, so a
	// Forget that commits late (its caller gave up) cannot undo a newer
	// pairing's.
	g, err := a.cli.Get(ctx, cur)
	if err != nil {
		return fmt.Errorf("arbiter: etcd: reading %s: %w", cur, err)
	}
	var rev int64
	if len(g.Kvs) > 0 {
		old := string(g.Kvs[0].Value)
		if old == epoch {
			return nil
		}
		if validEpoch(old) && !epochBefore(old, epoch) {
			return fmt.Errorf("arbiter: %s already has a newer pairing (epoch %s)", uuid, old)
		}
		rev = g.Kvs[0].ModRevision
	}
	resp, err := a.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(cur), "=", rev)).Then(clientv3.OpPut(cur, epoch)).Commit()
	if err != nil {
		return fmt.Errorf("arbiter: etcd: setting the current epoch of %s: %w", uuid, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("arbiter: etcd: the current epoch of %s changed meanwhile; start the domain again", uuid)
	}
	dir := path.Join(a.prefix, "claims", uuid) + "/"
	list, err := a.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		a.log.WithError(err).Warn("arbiter: etcd: listing old claims")
		return nil
	}
	for _, kv := range list.Kvs {
		if e := strings.TrimPrefix(string(kv.Key), dir); validEpoch(e) && epochBefore(e, epoch) {
			_, _ = a.cli.Delete(ctx, string(kv.Key))
		}
	}
	return nil
}

// Close ends the connection to etcd. Claims stay (they have no lease).
func (a *etcdArbiter) Close() error { return a.cli.Close() }

// boundedArbiter bounds every claim of an Arbiter that can hang (a file
// system claim on a hung NFS mount): after timeout the claim is an error
// (neither won nor lost) and the daemon goes on; while one claim hangs,
// later ones fail at once instead of piling up.
type boundedArbiter struct {
	Arbiter
	timeout time.Duration
	busy    chan struct{} // one claim in flight
}

func newBoundedArbiter(a Arbiter, timeout time.Duration) *boundedArbiter {
	return &boundedArbiter{Arbiter: a, timeout: timeout, busy: make(chan struct{}, 1)}
}

// Forget is bounded like Acquire.
func (b *boundedArbiter) Forget(uuid, epoch string) error {
	done := make(chan error, 1)
	go func() { done <- b.Arbiter.Forget(uuid, epoch) }()
	t := time.NewTimer(b.timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("arbiter: no answer within %v", b.timeout)
	}
}

func (b *boundedArbiter) Acquire(uuid, epoch string) (bool, error) {
	select {
	case b.busy <- struct{}{}:
	default:
		return false, errors.New("arbiter: an earlier claim has not returned yet (hung storage?)")
	}
	type result struct {
		won bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() { <-b.busy }()
		won, err := b.Arbiter.Acquire(uuid, epoch)
		done <- result{won, err}
	}()
	t := time.NewTimer(b.timeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.won, r.err
	case <-t.C:
		return false, fmt.Errorf("arbiter: no answer within %v", b.timeout)
	}
}
