//! (placeholder stub until the tsh branch lands)
#[derive(Debug)]
pub struct TshCommand;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct EncodeError;
impl TshCommand {
    pub fn xcommand(_p: &str) -> Result<Self, EncodeError> { Ok(TshCommand) }
    pub fn xconfiguration_set(_p: &str, _v: &str) -> Result<Self, EncodeError> { Ok(TshCommand) }
    pub fn param(self, _n: &str, _v: &str) -> Result<Self, EncodeError> { Ok(self) }
}
