//! Learning-rate schedules as pure functions of the update step (1-based).

use crate::config::{ScheduleKind, TrainConfig};

/// The learning rate of update `step` (1-based).
pub fn learning_rate(cfg: &TrainConfig, step: usize) -> f64 {
    let step = step.max(1) as f64;
    let warmup = cfg.warmup_steps as f64;
    let ramp = if warmup > 0.0 {
        (step / warmup).min(1.0)
    } else {
        1.0
    };
    match cfg.schedule {
        ScheduleKind::Constant => cfg.lr * ramp,
        ScheduleKind::Cosine => {
            let span = (cfg.max_steps as f64 - warmup).max(1.0);
            let progress = ((step - warmup) / span).clamp(0.0, 1.0);
            cfg.lr * ramp.min(0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
        }
        ScheduleKind::InverseSqrt => {
            let decay = if warmup > 0.0 {
                (warmup / step).sqrt().min(1.0)
            } else {
                step.sqrt().recip()
            };
            cfg.lr * ramp.min(decay)
        }
    }
}
