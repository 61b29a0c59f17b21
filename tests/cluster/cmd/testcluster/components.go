package main

// components.go: embedded etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the kwok
// controllers, each started in this process the way the upstream StartTestServer helpers do it.

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	kapiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kapiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	ksched "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kschedoptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"k8s.io/utils/clock"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
	"sigs.k8s.io/kwok/pkg/apis/internalversion"
	"sigs.k8s.io/kwok/pkg/client/clientset/versioned"
	kwokconfig "sigs.k8s.io/kwok/pkg/config"
	"sigs.k8s.io/kwok/pkg/kwok/controllers"
	kwokclient "sigs.k8s.io/kwok/pkg/utils/client"
)

const (
	serviceCIDR  = "10.0.0.0/16"
	serviceAPIIP = "10.0.0.1"
	podCIDR      = "10.244.0.0/16"
	fakeNodeIP   = "10.240.0.1"
)

// newComponentRegistry gives one component its own feature-gate/version registry, as the upstream
// test servers do, so that three components can live in one process.
func newComponentRegistry() (basecompatibility.ComponentGlobalsRegistry, error) {
	featureGate := utilfeature.DefaultMutableFeatureGate.DeepCopy()
	effectiveVersion := compatibility.DefaultBuildEffectiveVersion()
	effectiveVersion.SetEmulationVersion(featureGate.EmulationVersion())
	effectiveVersion.SetMinCompatibilityVersion(featureGate.MinCompatibilityVersion())
	reg := basecompatibility.NewComponentGlobalsRegistry()
	if err := reg.Register(basecompatibility.DefaultKubeComponent, effectiveVersion, featureGate); err != nil {
		return nil, err
	}
	return reg, nil
}

// startEtcd runs an embedded single-member etcd with its data under dir.
func startEtcd(dir string, clientPort, peerPort int) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "testcluster"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ListenMetricsUrls = nil
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("etcd did not become ready within 60s")
	}
	return e, clientURL.String(), nil
}

// startAPIServer runs kube-apiserver in this process; the returned channel yields its exit error.
func startAPIServer(ctx context.Context, pki PKI, etcdURL string, listener net.Listener, port int, certDir string, extra []string) (<-chan error, error) {
	s := kapiserveroptions.NewServerRunOptions()
	reg, err := newComponentRegistry()
	if err != nil {
		return nil, err
	}
	s.Options.GenericServerRunOptions.ComponentGlobalsRegistry = reg

	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	// The flag is a list: a PKCS#8 sa.key (pailot's) is not readable as a public key, sa.pub is.
	saPublic := pki.ServiceAcctKey
	if pki.ServiceAcctPub != "" {
		saPublic = pki.ServiceAcctPub
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + certDir,
		"--tls-cert-file=" + pki.ServingCert,
		"--tls-private-key-file=" + pki.ServingKey,
		"--client-ca-file=" + pki.CACert,
		"--service-account-key-file=" + saPublic,
		"--service-account-signing-key-file=" + pki.ServiceAcctKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	if pki.ServiceAcctPub != "" {
		args = append(args,
			"--requestheader-client-ca-file="+pki.FrontProxyCA,
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-username-headers=X-Remote-User",
			"--proxy-client-cert-file="+pki.FrontProxyClientCert,
			"--proxy-client-key-file="+pki.FrontProxyClientKey,
			"--kubelet-client-certificate="+pki.KubeletClientCert,
			"--kubelet-client-key="+pki.KubeletClientKey,
		)
	}
	args = append(args, extra...)
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("kube-apiserver flags: %w", err)
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = port
	s.SecureServing.ExternalAddress = net.ParseIP("127.0.0.1")
	if err := reg.Set(); err != nil {
		return nil, err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return nil, fmt.Errorf("kube-apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	config, err := kapiserver.NewConfig(completed)
	if err != nil {
		return nil, err
	}
	cc, err := config.Complete()
	if err != nil {
		return nil, err
	}
	server, err := kapiserver.CreateServerChain(cc)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver server chain: %w", err)
	}
	errCh := make(chan error, 1)
	go func() {
		defer close(errCh)
		prepared, err := server.PrepareRun()
		if err != nil {
			errCh <- err
			return
		}
		errCh <- prepared.Run(ctx)
	}()
	return errCh, nil
}

// startControllerManager runs kube-controller-manager (all default controllers) in this process.
func startControllerManager(ctx context.Context, kubeconfig string, pki PKI) (<-chan error, error) {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	reg, err := newComponentRegistry()
	if err != nil {
		return nil, err
	}
	s.ComponentGlobalsRegistry = reg
	all, disabled, aliases := kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range named.FlagSets {
		fs.AddFlagSet(f)
	}
	// With pailot's PKI, run it as the kubernetes chart's static pod does (and kubeadm): each controller
	// with its own service account, whose token the API server checks against sa.pub.
	useSACredentials := "false"
	if pki.ControllerManagerKubeconfig != "" {
		useSACredentials = "true"
	}
	if err := fs.Parse([]string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--service-account-private-key-file=" + pki.ServiceAcctKey,
		"--root-ca-file=" + pki.CACert,
		"--cluster-signing-cert-file=" + pki.CACert,
		"--cluster-signing-key-file=" + pki.CAKey,
		"--use-service-account-credentials=" + useSACredentials,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--profiling=false",
		"--concurrent-deployment-syncs=5",
		// kwok renews node leases from this same process; on a loaded 2-core CI machine a renewal can
		// lag past the 50 s default, the node goes NotReady, and kwok never restores the pods' Ready
		// condition. Fake nodes do not fail, so give them a grace period no test run outlasts.
		"--node-monitor-grace-period=10m",
	}); err != nil {
		return nil, fmt.Errorf("kube-controller-manager flags: %w", err)
	}
	s.ParsedFlags = &named
	if err := reg.Set(); err != nil {
		return nil, err
	}
	config, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return nil, fmt.Errorf("kube-controller-manager config: %w", err)
	}
	errCh := make(chan error, 1)
	go func() {
		defer close(errCh)
		errCh <- kcm.Run(ctx, config.Complete())
	}()
	return errCh, nil
}

// startScheduler runs kube-scheduler with its default profile in this process.
func startScheduler(ctx context.Context, kubeconfig string) (<-chan error, error) {
	reg, err := newComponentRegistry()
	if err != nil {
		return nil, err
	}
	opts := kschedoptions.NewOptionsWithComponentGlobalsRegistry(reg)
	fs := pflag.NewFlagSet("kube-scheduler", pflag.ContinueOnError)
	for _, f := range opts.Flags.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse([]string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--profiling=false",
	}); err != nil {
		return nil, fmt.Errorf("kube-scheduler flags: %w", err)
	}
	if err := reg.Set(); err != nil {
		return nil, err
	}
	cc, sched, err := ksched.Setup(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("kube-scheduler setup: %w", err)
	}
	errCh := make(chan error, 1)
	go func() {
		defer close(errCh)
		errCh <- ksched.Run(ctx, cc, sched)
	}()
	return errCh, nil
}

// startKwok runs the kwok controllers that play kubelet for every node annotated kwok.x-k8s.io/node=fake.
func startKwok(ctx context.Context, kubeconfig string) error {
	stages := map[internalversion.StageResourceRef][]*internalversion.Stage{}
	for _, raw := range []string{nodefast.DefaultNodeInit, podfast.DefaultPodReady, podfast.DefaultPodComplete, podfast.DefaultPodDelete} {
		st, err := kwokconfig.UnmarshalWithType[*internalversion.Stage](raw)
		if err != nil {
			return fmt.Errorf("kwok stage: %w", err)
		}
		stages[st.Spec.ResourceRef] = append(stages[st.Spec.ResourceRef], st)
	}
	cs, err := kwokclient.NewClientset("", kubeconfig)
	if err != nil {
		return err
	}
	restConfig, err := cs.ToRESTConfig()
	if err != nil {
		return err
	}
	dynamicClient, err := cs.ToDynamicClient()
	if err != nil {
		return err
	}
	restMapper, err := cs.ToRESTMapper()
	if err != nil {
		return err
	}
	restClient, err := rest.RESTClientFor(restConfig)
	if err != nil {
		return err
	}
	typedClient, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	kwokClient, err := versioned.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	id, err := controllers.Identity()
	if err != nil {
		return err
	}
	defaults := kwokconfig.GetKwokConfiguration(ctx).Options
	ctr, err := controllers.NewController(controllers.Config{
		Clock:                             clock.RealClock{},
		DynamicClient:                     dynamicClient,
		RESTClient:                        restClient,
		RESTMapper:                        restMapper,
		ImpersonatingDynamicClient:        cs.ToImpersonatingDynamicClient(),
		ImpersonatingTypedClient:          cs.ToImpersonatingTypedClient(),
		TypedClient:                       typedClient,
		TypedKwokClient:                   kwokClient,
		ManageNodesWithAnnotationSelector: kwokAnnotation + "=fake",
		CIDR:                              podCIDR,
		NodeIP:                            fakeNodeIP,
		LocalStages:                       stages,
		PodPlayStageParallelism:           defaults.PodPlayStageParallelism,
		NodePlayStageParallelism:          defaults.NodePlayStageParallelism,
		NodeLeaseDurationSeconds:          defaults.NodeLeaseDurationSeconds,
		NodeLeaseParallelism:              defaults.NodeLeaseParallelism,
		PodsOnNodeSyncParallelism:         defaults.PodsOnNodeSyncParallelism,
		EnablePodsOnNodeSyncListPager:     defaults.EnablePodsOnNodeSyncListPager,
		EnablePodsOnNodeSyncStreamWatch:   defaults.EnablePodsOnNodeSyncStreamWatch,
		ID:                                id,
	})
	if err != nil {
		return fmt.Errorf("kwok controller: %w", err)
	}
	return ctr.Start(ctx)
}

// portsFile keeps the chosen ports in the data dir so that a restart reuses them (stable kubeconfig,
// stable etcd peer URL).
type ports struct {
	APIServer  int `json:"apiserver"`
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portsPath(dataDir string) string { return filepath.Join(dataDir, "ports.json") }
