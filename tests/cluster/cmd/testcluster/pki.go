package main

// pki.go: the cluster's own CA and the certificates signed by it, kept in <data-dir>/pki so that a
// restarted control plane presents the same CA and the admin kubeconfig stays valid.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// PKI holds the paths of every certificate and key the control plane uses.
type PKI struct {
	Dir            string
	CACert         string
	CAKey          string
	ServingCert    string
	ServingKey     string
	AdminCert      string
	AdminKey       string
	ServiceAcctKey string
	// Set only for a PKI written by `pailot bootstrap` (--pki-root): kubeadm's layout.
	ServiceAcctPub              string
	FrontProxyCA                string
	FrontProxyClientCert        string
	FrontProxyClientKey         string
	KubeletClientCert           string
	KubeletClientKey            string
	AdminKubeconfig             string
	ControllerManagerKubeconfig string
	SchedulerKubeconfig         string
}

// pkiFromRoot uses the PKI and kubeconfigs `pailot bootstrap --root root` wrote (kubeadm's file names),
// and returns the API server port named by its admin.conf (whose server must be on 127.0.0.1).
func pkiFromRoot(root string) (PKI, int, error) {
	k := filepath.Join(root, "etc", "kubernetes")
	j := func(n string) string { return filepath.Join(k, "pki", n) }
	p := PKI{
		Dir: filepath.Join(k, "pki"), CACert: j("ca.crt"), CAKey: j("ca.key"),
		ServingCert: j("apiserver.crt"), ServingKey: j("apiserver.key"),
		ServiceAcctKey: j("sa.key"), ServiceAcctPub: j("sa.pub"),
		FrontProxyCA: j("front-proxy-ca.crt"), FrontProxyClientCert: j("front-proxy-client.crt"), FrontProxyClientKey: j("front-proxy-client.key"),
		KubeletClientCert: j("apiserver-kubelet-client.crt"), KubeletClientKey: j("apiserver-kubelet-client.key"),
		AdminKubeconfig:             filepath.Join(k, "admin.conf"),
		ControllerManagerKubeconfig: filepath.Join(k, "controller-manager.conf"),
		SchedulerKubeconfig:         filepath.Join(k, "scheduler.conf"),
	}
	for _, f := range []string{p.CACert, p.CAKey, p.ServingCert, p.ServingKey, p.ServiceAcctKey, p.ServiceAcctPub, p.FrontProxyCA,
		p.FrontProxyClientCert, p.FrontProxyClientKey, p.KubeletClientCert, p.KubeletClientKey,
		p.AdminKubeconfig, p.ControllerManagerKubeconfig, p.SchedulerKubeconfig} {
		if !fileExists(f) {
			return p, 0, fmt.Errorf("%s is missing (run pailot bootstrap --root %s first)", f, root)
		}
	}
	cfg, err := clientcmd.LoadFromFile(p.AdminKubeconfig)
	if err != nil {
		return p, 0, err
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil {
		return p, 0, fmt.Errorf("%s has no current context with a cluster", p.AdminKubeconfig)
	}
	u, err := url.Parse(cfg.Clusters[ctx.Cluster].Server)
	if err != nil {
		return p, 0, err
	}
	if u.Hostname() != "127.0.0.1" {
		return p, 0, fmt.Errorf("%s names server %s; the test control plane listens on 127.0.0.1 only", p.AdminKubeconfig, u)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return p, 0, fmt.Errorf("%s: server %s has no port", p.AdminKubeconfig, u)
	}
	return p, port, nil
}

func copyFile(from, to string) error {
	raw, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, raw, 0o600)
}

func newPKIPaths(dir string) PKI {
	j := func(n string) string { return filepath.Join(dir, n) }
	return PKI{
		Dir: dir, CACert: j("ca.crt"), CAKey: j("ca.key"),
		ServingCert: j("apiserver.crt"), ServingKey: j("apiserver.key"),
		AdminCert: j("admin.crt"), AdminKey: j("admin.key"),
		ServiceAcctKey: j("sa.key"),
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ensurePKI creates the CA, serving, admin and service-account keys unless they already exist.
func ensurePKI(dir string) (PKI, error) {
	p := newPKIPaths(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	all := []string{p.CACert, p.CAKey, p.ServingCert, p.ServingKey, p.AdminCert, p.AdminKey, p.ServiceAcctKey}
	complete := true
	for _, f := range all {
		if !fileExists(f) {
			complete = false
		}
	}
	if complete {
		return p, nil
	}
	now := time.Now().Add(-time.Hour)
	notAfter := now.Add(10 * 365 * 24 * time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "pailot-testcluster-ca"},
		NotBefore:             now,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return p, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	if err := writeCert(p.CACert, caDER); err != nil {
		return p, err
	}
	if err := writeECKey(p.CAKey, caKey); err != nil {
		return p, err
	}

	issue := func(certPath, keyPath string, tmpl *x509.Certificate) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore = now
		tmpl.NotAfter = notAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			return err
		}
		if err := writeCert(certPath, der); err != nil {
			return err
		}
		return writeKey(keyPath, key)
	}
	if err := issue(p.ServingCert, p.ServingKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(serviceAPIIP)},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	}); err != nil {
		return p, fmt.Errorf("serving certificate: %w", err)
	}
	if err := issue(p.AdminCert, p.AdminKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "pailot-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return p, fmt.Errorf("admin certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	if err := writeECKey(p.ServiceAcctKey, saKey); err != nil {
		return p, err
	}
	return p, nil
}

func serial() *big.Int {
	limit := new(big.Int).Lsh(big.NewInt(1), 62)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

func writeCert(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeKey writes a PKCS#8 PEM key, the one encoding every client (Go, rustls, openssl) reads.
func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// writeECKey writes a SEC1 "EC PRIVATE KEY" PEM: the encoding the service-account key and
// cluster-signing key loaders (keyutil) read as both private and public key.
func writeECKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}
