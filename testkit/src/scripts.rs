//! Shell scripts that tests run inside domains.

/// Makes a domain's (a disposable template's) default application for text/plain a script
/// that edits the file it is given, appending `edited in <hostname>` (installed in the
/// private volume, `$HOME`). Run it as the default user with `sh -c`.
pub const EDITOR_SETUP: &str = r#"set -e
mkdir -p "$HOME/.config" "$HOME/.local/share/applications" "$HOME/bin"
printf '#!/bin/sh\necho "edited in $(uname -n)" >> "$1"\n' > "$HOME/bin/test-editor"
chmod 755 "$HOME/bin/test-editor"
printf '[Default Applications]\ntext/plain=test-editor.desktop\n' > "$HOME/.config/mimeapps.list"
printf '[Desktop Entry]\nType=Application\nName=Test editor\nExec=%s/bin/test-editor %%f\n' "$HOME" > "$HOME/.local/share/applications/test-editor.desktop"
"#;
