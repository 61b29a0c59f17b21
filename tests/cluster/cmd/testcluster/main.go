// Command testcluster runs a real Kubernetes control plane for tests in one process: embedded etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake kubelets for fake nodes).
//
// It listens on 127.0.0.1 only, serves TLS from its own CA, writes an admin kubeconfig to --kubeconfig,
// and, once /readyz answers, the fake nodes are Ready and the default service account exists, prints a
// line "ready ..." on stdout and writes --ready-file. SIGTERM/SIGINT stop it cleanly.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
)

func init() {
	// Three components apply logging configuration in one process; identical reapplication is fine.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type options struct {
	kubeconfig   string
	pkiRoot      string
	readyFile    string
	dataDir      string
	nodesFile    string
	nodes        multiFlag
	port         int
	readyTimeout time.Duration
	apiserverArg multiFlag
}

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) == 3 && os.Args[1] == "check-kubelet-config" {
		if err := checkKubeletConfig(os.Args[2]); err != nil {
			fmt.Fprintf(os.Stderr, "testcluster check-kubelet-config: %v\n", err)
			return 1
		}
		return 0
	}
	var o options
	fs := flag.NewFlagSet("testcluster", flag.ContinueOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "write the admin kubeconfig here (required)")
	fs.StringVar(&o.pkiRoot, "pki-root", "", "serve with the PKI and kubeconfigs `pailot bootstrap --root DIR` wrote under DIR/etc/kubernetes (the port comes from its admin.conf); --kubeconfig gets a copy of its admin.conf")
	fs.StringVar(&o.readyFile, "ready-file", "", "create this file once the cluster is ready; removed on shutdown")
	fs.StringVar(&o.dataDir, "data-dir", "", "keep etcd data, certificates and ports here so a restart keeps all objects (default: a temporary directory removed on exit)")
	fs.StringVar(&o.nodesFile, "nodes-file", "", "YAML/JSON file: nodes: [{name, labels, capacity, allocatable, taints}]")
	fs.Var(&o.nodes, "node", "fake node NAME[:label=value,...] with 8 cpu / 32Gi / 110 pods (repeatable)")
	fs.IntVar(&o.port, "port", 0, "kube-apiserver port on 127.0.0.1 (default: the port saved in --data-dir, else a free one)")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 5*time.Minute, "give up when not ready within this time")
	fs.Var(&o.apiserverArg, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--v=2 (repeatable)")
	klog.InitFlags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if o.kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "testcluster: --kubeconfig is required")
		return 2
	}
	var specs []NodeSpec
	if o.nodesFile != "" {
		s, err := loadNodesFile(o.nodesFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testcluster: nodes file: %v\n", err)
			return 2
		}
		specs = append(specs, s...)
	}
	for _, n := range o.nodes {
		s, err := parseNodeFlag(n)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testcluster: %v\n", err)
			return 2
		}
		specs = append(specs, s)
	}
	for _, s := range specs {
		if _, err := s.toNode(); err != nil {
			fmt.Fprintf(os.Stderr, "testcluster: %v\n", err)
			return 2
		}
	}
	if err := serve(o, specs); err != nil {
		klog.Flush()
		fmt.Fprintf(os.Stderr, "testcluster: %v\n", err)
		return 1
	}
	klog.Flush()
	return 0
}

func serve(o options, specs []NodeSpec) error {
	started := time.Now()
	sigCtx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()

	dataDir := o.dataDir
	if dataDir == "" {
		tmp, err := os.MkdirTemp("", "testcluster-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dataDir = tmp
	}
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	if o.readyFile != "" {
		_ = os.Remove(o.readyFile)
		defer os.Remove(o.readyFile)
	}

	var pki PKI
	if o.pkiRoot != "" {
		var port int
		pki, port, err = pkiFromRoot(o.pkiRoot)
		if err != nil {
			return fmt.Errorf("--pki-root: %w", err)
		}
		if o.port == 0 {
			o.port = port
		}
	}
	p, err := choosePorts(dataDir, o.port)
	if err != nil {
		return err
	}
	if o.pkiRoot == "" {
		pki, err = ensurePKI(filepath.Join(dataDir, "pki"))
		if err != nil {
			return fmt.Errorf("certificates: %w", err)
		}
	}
	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.APIServer)))
	if err != nil {
		return fmt.Errorf("kube-apiserver port %d: %w", p.APIServer, err)
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dataDir, "etcd"), p.EtcdClient, p.EtcdPeer)
	if err != nil {
		listener.Close()
		return err
	}
	defer etcd.Close()
	klog.Infof("testcluster: etcd ready at %s (%s)", etcdURL, time.Since(started).Round(time.Millisecond))

	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	apiErr, err := startAPIServer(apiCtx, pki, etcdURL, listener, p.APIServer, filepath.Join(dataDir, "apiserver"), o.apiserverArg)
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", p.APIServer)
	if pki.AdminKubeconfig != "" {
		if err := copyFile(pki.AdminKubeconfig, o.kubeconfig); err != nil {
			return fmt.Errorf("copy %s: %w", pki.AdminKubeconfig, err)
		}
	} else if err := writeKubeconfig(o.kubeconfig, server, pki); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	kcfgAbs, _ := filepath.Abs(o.kubeconfig)
	restCfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}

	// Everything below the API server stops before it.
	ctrlCtx, stopCtrl := context.WithCancel(apiCtx)
	defer stopCtrl()
	shutdown := func() {
		stopCtrl()
		time.Sleep(500 * time.Millisecond)
		stopAPI()
		select {
		case <-apiErr:
		case <-time.After(30 * time.Second):
			klog.Warning("testcluster: kube-apiserver did not stop within 30s")
		}
	}

	readyCtx, cancelReady := context.WithTimeout(sigCtx, o.readyTimeout)
	defer cancelReady()
	if err := waitReadyz(readyCtx, client, apiErr); err != nil {
		shutdown()
		return fmt.Errorf("kube-apiserver /readyz: %w", err)
	}
	klog.Infof("testcluster: kube-apiserver ready at %s (%s)", server, time.Since(started).Round(time.Millisecond))

	kcmKubeconfig, schedKubeconfig := o.kubeconfig, o.kubeconfig
	if pki.ControllerManagerKubeconfig != "" {
		kcmKubeconfig, schedKubeconfig = pki.ControllerManagerKubeconfig, pki.SchedulerKubeconfig
	}
	kcmErr, err := startControllerManager(ctrlCtx, kcmKubeconfig, pki)
	if err != nil {
		shutdown()
		return err
	}
	schedErr, err := startScheduler(ctrlCtx, schedKubeconfig)
	if err != nil {
		shutdown()
		return err
	}
	if err := startKwok(ctrlCtx, o.kubeconfig); err != nil {
		shutdown()
		return err
	}
	if err := applyNodes(readyCtx, client, specs); err != nil {
		shutdown()
		return err
	}
	if err := waitClusterReady(readyCtx, client, specs); err != nil {
		shutdown()
		return fmt.Errorf("cluster not ready: %w", err)
	}
	if o.readyFile != "" {
		if err := os.WriteFile(o.readyFile, []byte(kcfgAbs+"\n"), 0o644); err != nil {
			shutdown()
			return err
		}
	}
	fmt.Printf("ready kubeconfig=%s server=%s nodes=%d after=%s\n", kcfgAbs, server, len(specs), time.Since(started).Round(time.Millisecond))

	var runErr error
	select {
	case <-sigCtx.Done():
		klog.Info("testcluster: signal received, shutting down")
	case err := <-apiErr:
		runErr = fmt.Errorf("kube-apiserver stopped: %v", err)
	case err := <-kcmErr:
		runErr = fmt.Errorf("kube-controller-manager stopped: %v", err)
	case err := <-schedErr:
		runErr = fmt.Errorf("kube-scheduler stopped: %v", err)
	case err := <-etcd.Err():
		runErr = fmt.Errorf("etcd stopped: %v", err)
	}
	shutdown()
	return runErr
}

func choosePorts(dataDir string, apiPort int) (ports, error) {
	var p ports
	if raw, err := os.ReadFile(portsPath(dataDir)); err == nil {
		if err := json.Unmarshal(raw, &p); err != nil {
			return p, fmt.Errorf("%s: %w", portsPath(dataDir), err)
		}
	}
	if apiPort != 0 {
		p.APIServer = apiPort
	}
	for _, slot := range []*int{&p.APIServer, &p.EtcdClient, &p.EtcdPeer} {
		if *slot == 0 {
			n, err := freePort()
			if err != nil {
				return p, err
			}
			*slot = n
		}
	}
	raw, _ := json.Marshal(p)
	return p, os.WriteFile(portsPath(dataDir), raw, 0o644)
}

func writeKubeconfig(path, server string, pki PKI) error {
	ca, err := os.ReadFile(pki.CACert)
	if err != nil {
		return err
	}
	crt, err := os.ReadFile(pki.AdminCert)
	if err != nil {
		return err
	}
	key, err := os.ReadFile(pki.AdminKey)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["testcluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	cfg.Contexts["testcluster"] = &clientcmdapi.Context{Cluster: "testcluster", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "testcluster"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func waitReadyz(ctx context.Context, client kubernetes.Interface, apiErr <-chan error) error {
	return wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-apiErr:
			if err == nil {
				err = errors.New("exited")
			}
			return false, err
		default:
		}
		status := 0
		client.CoreV1().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		return status == 200, nil
	})
}

// waitClusterReady waits for the default service account and for every fake node to be Ready.
func waitClusterReady(ctx context.Context, client kubernetes.Interface, specs []NodeSpec) error {
	var last string
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if _, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			last = "service account default/default: " + err.Error()
			return false, nil
		}
		for _, s := range specs {
			n, err := client.CoreV1().Nodes().Get(ctx, s.Name, metav1.GetOptions{})
			if err != nil {
				last = "node " + s.Name + ": " + err.Error()
				return false, nil
			}
			ready := false
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready = true
				}
			}
			if !ready {
				last = "node " + s.Name + " not Ready"
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil && last != "" {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return err
}
