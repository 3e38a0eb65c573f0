//! Prometheus metrics, declared and exported the same way by every binary.
//!
//! [`metrics!`](crate::metrics!) declares a binary's metrics once: each field's name is
//! its metric name and its doc comment its help text; a field may say how it is built
//! (`= Histogram::new(...)`), otherwise it is its type's default. [`render`] writes them
//! in the text format under the binary's prefix, with `<prefix>_build_info{version,
//! revision}` (always 1) so a scrape tells which build answered.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;

/// Declares a struct of metrics (see the [module](self)).
#[macro_export]
macro_rules! metrics {
    (@init $ty:ty) => { <$ty>::default() };
    (@init $ty:ty, $init:expr) => { $init };
    (
        $(#[doc = $sdoc:literal])*
        $vis:vis struct $Name:ident {
            $( $(#[doc = $doc:literal])+ $name:ident: $ty:ty $(= $init:expr)?, )+
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug)]
        $vis struct $Name {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        impl Default for $Name {
            fn default() -> Self {
                Self { $( $name: $crate::metrics!(@init $ty $(, $init)?), )+ }
            }
        }

        impl $Name {
            /// Registers every metric under its field name, its doc comment as help.
            pub fn register(&self, registry: &mut $crate::metrics::Registry) {
                $( registry.register(
                    stringify!($name),
                    $crate::metrics::help(&[$($doc),+]),
                    self.$name.clone(),
                ); )+
            }
        }
    };
}

/// A help text from doc comment lines (each starts with the space after `///`).
pub fn help(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches('.')
        .to_string()
}

/// The labels of `build_info`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// The version of the binaries (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision the binary was built from: `SCALE_AGENT_REVISION` at build
/// time (the image script sets it), `unknown` otherwise.
pub const REVISION: &str = match option_env!("SCALE_AGENT_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// The text exposition of the metrics `register` adds, under `prefix`, with
/// `<prefix>_build_info`.
pub fn render(prefix: &str, register: impl FnOnce(&mut Registry)) -> String {
    let mut registry = Registry::with_prefix(prefix);
    let build: Family<BuildLabels, Gauge> = Family::default();
    build
        .get_or_create(&BuildLabels {
            version: VERSION,
            revision: REVISION,
        })
        .set(1);
    registry.register(
        "build_info",
        "The build: version and source revision",
        build,
    );
    register(&mut registry);
    let mut out = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(%err, "encoding metrics failed");
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;

    crate::metrics! {
        /// Test metrics.
        struct Sample {
            /// Things done.
            /// Over two lines.
            done: Counter,
            /// How long.
            took: Histogram = Histogram::new([0.1, 1.0]),
        }
    }

    #[test]
    fn fields_render_under_their_names_with_their_docs_and_the_build() {
        let sample = Sample::default();
        sample.done.inc();
        sample.took.observe(0.5);
        let text = super::render("demo", |r| sample.register(r));
        assert!(
            text.contains("# HELP demo_done Things done. Over two lines.\n"),
            "{text}"
        );
        assert!(text.contains("demo_done_total 1\n"), "{text}");
        assert!(text.contains("demo_took_bucket{le=\"1.0\"} 1\n"), "{text}");
        assert!(
            text.contains(&format!(
                "demo_build_info{{version=\"{}\",revision=\"{}\"}} 1\n",
                super::VERSION,
                super::REVISION
            )),
            "{text}"
        );
    }
}
