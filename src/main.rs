//! The `tailscale-gateway` binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tailscale_gateway::{check, runtime};

/// mimalloc: the admission hot path allocates a few dozen small strings per review, freed right
/// after; glibc's malloc spent noticeably more time on them (see the admission benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tailscale + Envoy Gateway on Kubernetes: admission webhooks, aggregated API, reconciler and
/// Envoy Gateway extension in one binary.
#[derive(Parser)]
#[command(name = "tailscale-gateway", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"], env = "TSGW_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (in a cluster, or with --local DIR on a laptop).
    Serve(Box<runtime::ServeArgs>),
    /// Validate manifests offline with the webhook's rules; exit 1 on any rejected document.
    #[command(
        override_usage = "tailscale-gateway check [-n NAMESPACE] [-f] PATH...\n       ... | tailscale-gateway check -f -"
    )]
    Check {
        /// Files or folders (walked recursively for *.yaml, *.yml, *.json); `-` reads standard
        /// input.
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// More files or folders, as with -f.
        #[arg(value_name = "PATH", required_unless_present = "paths")]
        more: Vec<PathBuf>,
        /// Namespace for objects that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Print our CustomResourceDefinitions as YAML (the content of crds/).
    Crds,
    /// Print, without a cluster, the Kubernetes objects the reconciler would create for the given
    /// resources (StatefulSets, Services, Secrets with placeholder auth keys, ...), for review in CI.
    #[command(
        override_usage = "tailscale-gateway render [-n NAMESPACE] [-f] PATH...\n       ... | tailscale-gateway render -f -"
    )]
    Render {
        /// Files or folders (walked recursively for *.yaml, *.yml, *.json); `-` reads standard
        /// input.
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// More files or folders, as with -f.
        #[arg(value_name = "PATH", required_unless_present = "paths")]
        more: Vec<PathBuf>,
        /// Namespace for objects that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Default Tailscale proxy image.
        #[arg(long, default_value = "tailscale/tailscale:stable")]
        proxy_image: String,
        /// Kubernetes cluster DNS domain of the backends' Service names.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Namespace of Envoy Gateway's controller (where a served Gateway's Service lives).
        #[arg(long, default_value = tailscale_gateway::core::dataplane::DEFAULT_ENVOY_GATEWAY_NAMESPACE)]
        envoy_gateway_namespace: String,
    },
}

/// `render`: load and validate like `check`, then print what the reconciler would create.
fn render(paths: &[PathBuf], opts: tailscale_gateway::render::RenderOptions) -> ExitCode {
    let namespace = opts.namespace.as_str();
    let loaded = tailscale_gateway::manifest::load(paths, namespace);
    for p in &loaded.problems {
        eprintln!("{p}");
    }
    if loaded.has_errors() {
        eprintln!("error: fix the rejected documents above first (see `tailscale-gateway check`)");
        return ExitCode::from(1);
    }
    let resources: Vec<_> = loaded.resources.into_iter().map(|(_, r)| r).collect();
    let objects = tailscale_gateway::render::render(&resources, &opts);
    if objects.is_empty() {
        eprintln!(
            "nothing to render: the reconciler creates objects for TailscaleEndpoints (and TailscaleServices with \
             endpointTemplate), and the input has none"
        );
    }
    let mut out = String::new();
    for obj in objects {
        match serde_saphyr::to_string(&obj) {
            Ok(yaml) => {
                out.push_str("---\n");
                out.push_str(&yaml);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    emit(&out)
}

/// Writes `text` to standard output. A reader that went away (`| head`) ends the command quietly
/// and successfully, as it does for every Unix tool.
fn emit(text: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn,rustls=warn,h2=error"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match cli.command {
        Command::Crds => match tailscale_gateway::api::crds_yaml() {
            Ok(yaml) => emit(&yaml),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Render { mut paths, more, namespace, proxy_image, cluster_domain, envoy_gateway_namespace } => {
            paths.extend(more);
            let placement = tailscale_gateway::core::dataplane::Placement {
                cluster_domain,
                envoy_gateway_namespace,
                ..Default::default()
            };
            render(&paths, tailscale_gateway::render::RenderOptions { namespace, proxy_image, placement })
        }
        Command::Check { paths, more, namespace } => {
            match check::run(&[paths.as_slice(), more.as_slice()].concat(), &namespace, &mut std::io::stdout()) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                let running = match runtime::start(*args).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {}", tailscale_gateway::errors::describe(e.as_ref()));
                        return ExitCode::FAILURE;
                    }
                };
                if let Some(kc) = &running.kubeconfig {
                    // Absolute, so the line works from any directory.
                    let kc = std::path::absolute(kc).unwrap_or_else(|_| kc.clone());
                    tracing::info!(kubeconfig = %kc.display(), "kubeconfig for kubectl: export KUBECONFIG={}", kc.display());
                }
                runtime::shutdown_signal().await;
                tracing::info!("shutting down");
                running.shutdown().await;
                ExitCode::SUCCESS
            })
        }
    }
}
