//! Fargate's valid task sizes, checked before `RunTask` so a bad pair fails the job with
//! the allowed values instead of an AWS error at launch.
//!
//! Source: "Task CPU and memory" in the Amazon ECS Developer Guide (Fargate):
//! <https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html#fargate-tasks-size>.

use jetrun_core::job::Resources;

/// CPU units (1024 = 1 vCPU) and the memory values (MiB) Fargate accepts with them.
const SIZES: [(u32, u32, u32, u32); 7] = [
    // (cpu units, memory min, memory max, step)
    (256, 512, 2048, 0), // 512, 1024, 2048 only (see `memory_ok`)
    (512, 1024, 4096, 1024),
    (1024, 2048, 8192, 1024),
    (2048, 4096, 16384, 1024),
    (4096, 8192, 30720, 1024),
    (8192, 16384, 61440, 4096),
    (16384, 32768, 122880, 8192),
];

/// A task size: CPU units and memory in MiB, as `RunTask`'s task overrides take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSize {
    /// CPU units (1024 per vCPU).
    pub cpu: u32,
    /// Memory in MiB.
    pub memory: u32,
}

fn memory_ok(cpu: u32, memory: u32) -> bool {
    SIZES.iter().any(|&(c, min, max, step)| {
        c == cpu
            && if step == 0 {
                matches!(memory, 512 | 1024 | 2048)
            } else {
                (min..=max).contains(&memory) && (memory - min).is_multiple_of(step)
            }
    })
}

/// The allowed memory values for `cpu`, described for an error message.
fn allowed_memory(cpu: u32) -> String {
    match SIZES.iter().find(|s| s.0 == cpu) {
        Some(&(_, _, _, 0)) => "512, 1024 or 2048 MiB".to_string(),
        Some(&(_, min, max, step)) => format!("{min} to {max} MiB in steps of {step}"),
        None => String::new(),
    }
}

fn allowed_cpus() -> String {
    SIZES
        .iter()
        .map(|s| format!("{}", f64::from(s.0) / 1024.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Fargate size for a job's resources: `None` when the job asks for neither (the task
/// definition's size applies). Given only CPUs, the smallest memory of that CPU; given only
/// memory, the smallest CPU that allows it. `Err` says what is allowed.
pub fn size_for(res: &Resources) -> Result<Option<TaskSize>, String> {
    let cpu = match res.cpus {
        None => None,
        Some(c) if !(c.is_finite() && c > 0.0) => return Err(format!("cpus {c} is not a positive number")),
        Some(c) => {
            let units = (c * 1024.0).round();
            match SIZES.iter().find(|s| f64::from(s.0) == units) {
                Some(s) => Some(s.0),
                None => {
                    return Err(format!("Fargate takes cpus {} (vCPU), not {c}", allowed_cpus()));
                }
            }
        }
    };
    let memory = match res.memory_mb {
        None => None,
        Some(m) => Some(u32::try_from(m).map_err(|_| format!("memory_mb {m} is too large for Fargate"))?),
    };
    match (cpu, memory) {
        (None, None) => Ok(None),
        (Some(cpu), Some(memory)) if memory_ok(cpu, memory) => Ok(Some(TaskSize { cpu, memory })),
        (Some(cpu), Some(memory)) => Err(format!(
            "Fargate with cpus {} takes memory_mb {}, not {memory}",
            f64::from(cpu) / 1024.0,
            allowed_memory(cpu)
        )),
        (Some(cpu), None) => {
            let min = SIZES.iter().find(|s| s.0 == cpu).map_or(512, |s| s.1);
            Ok(Some(TaskSize { cpu, memory: min }))
        }
        (None, Some(memory)) => SIZES
            .iter()
            .find(|s| memory_ok(s.0, memory))
            .map(|s| Some(TaskSize { cpu: s.0, memory }))
            .ok_or_else(|| {
                format!(
                    "Fargate takes memory_mb 512, 1024, 2048, then multiples of 1024 up to 30720, \
                     of 4096 up to 61440 and of 8192 up to 122880; not {memory}"
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn res(cpus: Option<f64>, memory_mb: Option<u64>) -> Resources {
        Resources {
            cpus,
            memory_mb,
            pids: None,
        }
    }

    #[test]
    fn valid_pairs_pass_and_missing_halves_are_filled() {
        assert_eq!(size_for(&res(None, None)), Ok(None));
        let ok = [
            (0.25, 512),
            (0.25, 2048),
            (0.5, 4096),
            (1.0, 2048),
            (2.0, 16384),
            (4.0, 30720),
            (8.0, 61440),
            (16.0, 122880),
        ];
        for (c, m) in ok {
            let s = size_for(&res(Some(c), Some(m))).unwrap().unwrap();
            assert_eq!((s.cpu, s.memory), ((c * 1024.0) as u32, m as u32));
        }
        assert_eq!(
            size_for(&res(Some(1.0), None)),
            Ok(Some(TaskSize {
                cpu: 1024,
                memory: 2048
            }))
        );
        assert_eq!(
            size_for(&res(None, Some(3072))),
            Ok(Some(TaskSize {
                cpu: 512,
                memory: 3072
            }))
        );
        assert_eq!(
            size_for(&res(None, Some(512))),
            Ok(Some(TaskSize {
                cpu: 256,
                memory: 512
            }))
        );
    }

    #[test]
    fn bad_pairs_say_what_is_allowed() {
        let e = size_for(&res(Some(0.25), Some(4096))).unwrap_err();
        assert!(e.contains("512, 1024 or 2048"), "{e}");
        let e = size_for(&res(Some(8.0), Some(18432))).unwrap_err();
        assert!(e.contains("16384 to 61440 MiB in steps of 4096"), "{e}");
        let e = size_for(&res(Some(3.0), Some(8192))).unwrap_err();
        assert!(e.contains("0.25, 0.5, 1, 2, 4, 8, 16"), "{e}");
        assert!(size_for(&res(Some(1.0), Some(1024))).is_err());
        assert!(size_for(&res(Some(1.0), Some(2500))).is_err());
        assert!(size_for(&res(None, Some(100))).is_err());
        assert!(size_for(&res(Some(-1.0), None)).is_err());
        assert!(size_for(&res(Some(f64::NAN), None)).is_err());
    }
}
