//! The one place where a device string becomes a [`burn::tensor::Device`].
//!
//! Accepted: `cpu` / `flex`, `ndarray`, `wgpu` (default adapter), `vulkan`, `wgpu-cpu`, `cuda` / `cuda:N`.
//! A backend that this build was compiled without is a clear error naming the cargo feature to enable.
use burn::tensor::Device;

/// Why a device string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not a known device name.
    #[error("unknown device {0:?}; expected cpu, flex, ndarray, wgpu, vulkan, wgpu-cpu, cuda or cuda:N")]
    Unknown(String),
    /// Known, but its backend is not compiled into this build.
    #[error("device {device:?} needs the `{feature}` cargo feature of psa-vlm; rebuild with `--features {feature}`")]
    NotCompiled {
        /// The requested device.
        device: String,
        /// The feature that provides it.
        feature: &'static str,
    },
}

/// Parses a device string such as `cpu`, `wgpu` or `cuda:1`.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    let missing = |feature| DeviceError::NotCompiled { device: spec.to_string(), feature };
    let (name, index) = match s.split_once(':') {
        Some((n, i)) => {
            let i: usize = i.parse().map_err(|_| DeviceError::Unknown(spec.to_string()))?;
            (n.to_string(), Some(i))
        }
        None => (s.clone(), None),
    };
    if index.is_some() && name != "cuda" {
        return Err(DeviceError::Unknown(spec.to_string()));
    }
    match name.as_str() {
        "cpu" | "flex" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[cfg(not(feature = "flex"))]
            return Err(missing("flex"));
        }
        "ndarray" => {
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            return Ok(Device::ndarray());
            #[cfg(not(feature = "ndarray"))]
            return Err(missing("ndarray"));
        }
        "wgpu" | "vulkan" | "wgpu-cpu" => {
            #[cfg(feature = "wgpu")]
            {
                use burn::tensor::DeviceKind;
                let kind = if name == "wgpu-cpu" { DeviceKind::Cpu } else { DeviceKind::DefaultDevice };
                return Ok(Device::wgpu(kind));
            }
            #[cfg(not(feature = "wgpu"))]
            return Err(missing("wgpu"));
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            return Ok(Device::cuda(index.unwrap_or(0)));
            #[cfg(not(feature = "cuda"))]
            {
                let _ = index;
                Err(missing("cuda"))
            }
        }
        _ => Err(DeviceError::Unknown(spec.to_string())),
    }
}

/// Parses a comma-separated device list such as `cuda:0,cuda:1` (data-parallel training).
pub fn parse_devices(spec: &str) -> Result<Vec<Device>, DeviceError> {
    let devices = spec.split(',').filter(|s| !s.trim().is_empty()).map(parse_device).collect::<Result<Vec<_>, _>>()?;
    if devices.is_empty() {
        return Err(DeviceError::Unknown(spec.to_string()));
    }
    Ok(devices)
}

/// Names of the backends compiled into this build, in the order tests run them.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "flex") {
        v.push("flex");
    }
    if cfg!(feature = "ndarray") {
        v.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_unknown_ones() {
        assert!(matches!(parse_device("warp-drive"), Err(DeviceError::Unknown(_))));
        assert!(matches!(parse_device("flex:1"), Err(DeviceError::Unknown(_))));
        assert!(matches!(parse_device("cuda:x"), Err(DeviceError::Unknown(_))));
        #[cfg(feature = "flex")]
        assert!(parse_device(" CPU ").is_ok());
        #[cfg(not(feature = "cuda"))]
        assert_eq!(
            parse_device("cuda:1").unwrap_err().to_string(),
            "device \"cuda:1\" needs the `cuda` cargo feature of psa-vlm; rebuild with `--features cuda`"
        );
    }
}
