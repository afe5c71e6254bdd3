//! Bulkhead templates: declarative recipes and a cached builder of read-only root trees.
//!
//! - [`Recipe`]: a validated `templates/recipes/<name>.toml` and its cache key
//!   ([`Recipe::hash`]: sha256 over the builder format version and the recipe bytes).
//! - [`TemplateStore`]: `<state>/templates`; [`TemplateStore::status`],
//!   [`TemplateStore::root_path`], [`TemplateStore::build`] (mmdebstrap, cached, crash-safe:
//!   build into a `.partial`, mark, rename, switch `current`), [`TemplateStore::gc`],
//!   [`TemplateStore::revert`] (back to the root before the last change or rebuild).
//! - [`TemplateStore::commit_changes`]: what a stopped template domain changed in its root,
//!   kept as a new root (see `changes`).
//! - [`BuildProgress`] / [`Stage`]: progress parsed from mmdebstrap's output.
//! - [`vm`]: what a VM domain boots (kernel, initramfs, ext4 images), built on demand with
//!   [`TemplateStore::build_vm`].

mod changes;
mod error;
mod mmdebstrap;
mod progress;
mod recipe;
mod sources;
mod store;
pub mod vm;

pub use changes::{
    CommitOutcome, IdRange, MAX_DEPTH as MAX_CHANGES_DEPTH, MAX_ENTRIES as MAX_CHANGES_ENTRIES,
};
pub use error::TemplateError;
pub use mmdebstrap::{customize_hooks, mmdebstrap_args, Mmdebstrap, RootBuilder};
pub use progress::{BuildProgress, Level, OutputParser, Stage};
pub use recipe::{
    validate_package_name, PackageGroup, Recipe, RecipeError, RecipeSpec, UserSpec, VmSpec,
    ALLOWED_COMPONENTS, ALLOWED_SUITES, ALLOWED_VARIANTS, BUILDER_FORMAT_VERSION, MAX_RECIPE_BYTES,
    MAX_VM_MODULES, SUPPORTED_RECIPE_FORMATS,
};
pub use sources::{host_sources_for_suite, parse_deb822, parse_one_line, AptSource};
pub use store::{TemplateMarker, TemplateStatus, TemplateStore, MARKER_PATH};

/// Where the recipes shipped with the source tree live (for tests and development).
pub fn source_recipes_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}
