package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/keyhole-net/keyhole/controller"
)

// clusterFlags join the controller to the other controllers sharing its
// database (docs/ha.md).
type clusterFlags struct {
	listen, advertise, keyFile string
	join                       []string
}

func (cl *clusterFlags) register(f *pflag.FlagSet) {
	f.StringVar(&cl.listen, "cluster-listen", ":7946", "gossip address (UDP and TCP) of the controller cluster; the cluster runs with --cluster-key-file")
	f.StringSliceVar(&cl.join, "cluster-join", nil, "another controller's gossip address, host:port (repeatable)")
	f.StringVar(&cl.keyFile, "cluster-key-file", "", "file with the cluster's shared gossip key: 16, 24 or 32 bytes, raw or base64 (openssl rand -base64 32); enables the cluster")
	f.StringVar(&cl.advertise, "cluster-advertise", "", "IP (or IP:port) the other controllers reach this one's gossip at (default: the bound address, or a private address of this host)")
}

// config returns the cluster configuration, nil without a gossip key.
func (cl *clusterFlags) config() (*controller.ClusterConfig, error) {
	if cl.keyFile == "" {
		if len(cl.join) > 0 || cl.advertise != "" {
			return nil, errors.New("--cluster-join and --cluster-advertise need --cluster-key-file: a cluster does not start without its gossip key")
		}
		return nil, nil
	}
	b, err := os.ReadFile(cl.keyFile)
	if err != nil {
		return nil, fmt.Errorf("--cluster-key-file: %w", err)
	}
	key, err := controller.ParseClusterKey(b)
	if err != nil {
		return nil, fmt.Errorf("--cluster-key-file %s: %w", cl.keyFile, err)
	}
	cfg := &controller.ClusterConfig{Join: cl.join, SecretKey: key}
	if cfg.BindAddr, cfg.BindPort, err = controller.ParseClusterListen(cl.listen); err != nil {
		return nil, fmt.Errorf("--cluster-listen: %w", err)
	}
	if cl.advertise != "" {
		host, port := cl.advertise, 0
		if h, p, err := controller.ParseClusterListen(cl.advertise); err == nil {
			host, port = h, p
		}
		cfg.AdvertiseAddr, cfg.AdvertisePort = host, port
	}
	return cfg, nil
}
