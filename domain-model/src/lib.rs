//! The Bulkhead domain model.
//!
//! - [`DomainName`]: names validated with Qubes' rules; [`new_disposable_name`] for `dispN`.
//! - [`DomainConfig`]: one domain's configuration (the TOML file), with [`Label`],
//!   [`DomainClass`], [`Isolation`], cross-field [`DomainConfig::validate`] and text property
//!   access for the D-Bus API ([`DomainConfig::get_property`], [`DomainConfig::set_property`],
//!   [`DomainConfig::properties`]).
//! - [`DomainStore`]: the `domains/` directory; atomic saves, per-file load errors that name
//!   the file, the field and the line.
//! - [`Paths`]: config, state and runtime directories (FHS defaults) and every path below them.
//! - [`volume`]: a domain's private volume image (made, converted, grown, copied on the host;
//!   domaind and the storage bench use it).
#![forbid(unsafe_code)]

mod config;
mod name;
mod paths;
mod store;
pub mod volume;

pub use config::{
    DomainClass, DomainConfig, Isolation, Label, ParseEnumError, PropertyError, TemplateRule,
    ValidationError, DEFAULT_MEMORY_MIB, DEFAULT_PRIVATE_SIZE_MIB, DEFAULT_VCPUS, FEATURE_PREFIX,
    MAX_DISPVM_POOL_SIZE, MAX_FEATURES, MAX_FEATURE_KEY_LEN, MAX_FEATURE_VALUE_LEN,
    MEMORY_RANGE_MIB, PRIVATE_SIZE_RANGE_MIB, PROPERTY_NAMES, VCPUS_RANGE,
};
pub use name::{
    new_disposable_name, validate_name, DomainName, NameError, MAX_DISPOSABLE_ID, MAX_NAME_LEN,
    RESERVED_NAMES,
};
pub use paths::{
    guest_tools_dir_from_env, Paths, AGENT_SOCKET_NAME, CHANNEL_MOUNT_POINT, DAEMON_CONFIG_FILE,
    DEFAULT_CONFIG_DIR, DEFAULT_GUEST_TOOLS_DIR, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR,
    ENV_CONFIG_DIR, ENV_GUEST_TOOLS_DIR, ENV_RUNTIME_DIR, ENV_STATE_DIR, GUEST_INIT_PATH,
    GUEST_TOOLS_MOUNT_POINT, PRIVATE_IMAGE_NAME,
};
pub use store::{
    parse_domain_toml, DomainStore, LoadError, StoreError, DOMAIN_FILE_EXT, MAX_DOMAIN_FILE_BYTES,
};
