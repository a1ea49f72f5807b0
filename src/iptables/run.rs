//! Running a plan: each [`Step`] becomes one or two iptables commands. The
//! programs sit behind [`Runner`], so the unit tests run the plans against
//! an in-memory table instead of the kernel's.

use std::process::{Command, Stdio};

use super::{args, shell, Family, IptablesError, Step, CHAINS};

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs iptables. [`System`] runs the real programs; tests use a fake.
pub trait Runner {
    fn run(&mut self, program: &str, args: &[String]) -> Result<Outcome, IptablesError>;
}

/// Runs the iptables programs found on `PATH`.
#[derive(Debug, Default)]
pub struct System;

impl Runner for System {
    fn run(&mut self, program: &str, args: &[String]) -> Result<Outcome, IptablesError> {
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| IptablesError::Missing {
                program: program.into(),
                source,
            })?;
        Ok(Outcome {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// How many copies of one jump `--clean` removes at most: a bound, so a
/// `-D` that keeps "succeeding" cannot spin forever.
const MAX_COPIES: usize = 64;

/// Checks that each family's program runs and may change the nat table, so
/// a missing binary or privilege is one clear error before anything changed.
pub fn preflight(families: &[Family], runner: &mut impl Runner) -> Result<(), IptablesError> {
    for &f in families {
        let probe = args("-S", "OUTPUT", &[]);
        let out = runner.run(f.program(), &probe)?;
        if !out.success {
            return Err(IptablesError::NotPermitted {
                program: f.program().into(),
                message: out.stderr,
            });
        }
    }
    Ok(())
}

/// Runs the steps in order; stops at the first that fails.
pub fn apply(steps: &[Step], runner: &mut impl Runner) -> Result<(), IptablesError> {
    for step in steps {
        let f = step.family();
        let mut run = |a: Vec<String>| -> Result<(Outcome, String), IptablesError> {
            let line = shell(f, &a);
            tracing::debug!(command = %line, "iptables");
            Ok((runner.run(f.program(), &a)?, line))
        };
        let must = |(out, line): (Outcome, String)| {
            if out.success {
                Ok(())
            } else {
                Err(IptablesError::Failed {
                    command: line,
                    message: out.stderr,
                })
            }
        };
        match step {
            Step::CreateOrFlush(_, c) => {
                if !run(args("-N", c, &[]))?.0.success {
                    must(run(args("-F", c, &[]))?)?;
                }
            }
            Step::Append(_, r) => must(run(args("-A", &r.chain, &r.spec))?)?,
            Step::AppendOnce(_, r) => {
                if !run(args("-C", &r.chain, &r.spec))?.0.success {
                    must(run(args("-A", &r.chain, &r.spec))?)?;
                }
            }
            Step::DeleteAll(_, r) => {
                for _ in 0..MAX_COPIES {
                    if !run(args("-D", &r.chain, &r.spec))?.0.success {
                        break;
                    }
                }
            }
            Step::Flush(_, c) => {
                run(args("-F", c, &[]))?;
            }
            Step::DeleteChain(_, c) => {
                run(args("-X", c, &[]))?;
            }
        }
    }
    Ok(())
}

/// After `--clean`: fails when a chain or jump of ours is still listed
/// (the steps themselves tolerate "not there", so this is the check).
pub fn verify_clean(families: &[Family], runner: &mut impl Runner) -> Result<(), IptablesError> {
    for &f in families {
        let list = ["-t", "nat", "-S"].map(String::from);
        let out = runner.run(f.program(), &list)?;
        let left: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| CHAINS.iter().any(|c| l.contains(c)))
            .collect();
        if !out.success || !left.is_empty() {
            return Err(IptablesError::Leftover {
                program: f.program().into(),
                left: if out.success {
                    left.join("\n")
                } else {
                    out.stderr
                },
            });
        }
    }
    Ok(())
}
