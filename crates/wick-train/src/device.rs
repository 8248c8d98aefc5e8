//! `--device cpu|cuda[:N]|metal`.

use anyhow::{Result, bail};
use candle_core::Device;

pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(rest) = spec.strip_prefix("cuda") {
        let ordinal = match rest.strip_prefix(':') {
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("--device {spec}: expected cuda or cuda:N"))?,
            None if rest.is_empty() => 0,
            None => bail!("--device {spec}: expected cuda or cuda:N"),
        };
        if !cfg!(feature = "cuda") {
            bail!(
                "--device {spec}: this wick was built without CUDA support; rebuild with `cargo build --release --features cuda`"
            )
        }
        return Ok(Device::new_cuda(ordinal)?);
    }
    if spec == "metal" {
        if !cfg!(feature = "metal") {
            bail!(
                "--device metal: this wick was built without Metal support; rebuild with `cargo build --release --features metal`"
            )
        }
        return Ok(Device::new_metal(0)?);
    }
    bail!("--device {spec}: expected cpu, cuda, cuda:N or metal")
}
