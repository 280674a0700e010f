//! The dotted parameter path (`safety.safe_part.level_head.weight`) a module visitor or mapper is at, as Burn's
//! stores name parameters: enum variants are not part of it.
/// A path that follows `enter_module` / `exit_module` calls.
#[derive(Debug, Clone, Default)]
pub struct ModulePath(Vec<String>);

impl ModulePath {
    /// Steps into a submodule (an enum variant adds nothing).
    pub fn enter(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }

    /// Steps out of a submodule.
    pub fn exit(&mut self, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.pop();
        }
    }

    /// The path, dot-joined.
    pub fn joined(&self) -> String {
        self.0.join(".")
    }
}
