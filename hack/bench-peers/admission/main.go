// Command admission-peer is the controller-runtime peer of `cargo bench --bench admission`: what a
// Go operator author would write instead of our /validate, served by controller-runtime's
// webhook.Server with a typed validator (admission.WithValidator, the generic successor of
// CustomValidator) for a Go TailscaleServices type.
//
// It implements the rules our webhook applies to the object the bench sends (a CREATE of a
// TailscaleServices with metadata labels, a matchLabels selector, a named VIP service with ports
// and tags, and a load-balancing strategy with a health check); see validate.go. Rules for parts
// of the spec that object leaves out (endpointTemplate, serve, tailnet) are not implemented.
//
// Usage: admission-peer -cert-dir DIR -port PORT   (DIR holds tls.crt and tls.key)
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

func main() {
	certDir := flag.String("cert-dir", "", "directory holding tls.crt and tls.key")
	port := flag.Int("port", 9443, "port to serve HTTPS on (127.0.0.1)")
	flag.Parse()
	// controller-runtime warns once when no logger is set; the bench wants none.
	log.SetLogger(log.Log.WithSink(nil))

	scheme := runtime.NewScheme()
	if err := AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server := webhook.NewServer(webhook.Options{
		Host:    "127.0.0.1",
		Port:    *port,
		CertDir: *certDir,
		// As kubebuilder's scaffold does by default: HTTP/1.1 only.
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	})
	server.Register("/validate", admission.WithValidator[*TailscaleServices](scheme, &ServicesValidator{claims: NewClaims()}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := server.Start(ctx); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
