//! Burn's record loading and cubecl's device start-up report some failures by panicking; these
//! helpers turn such a panic into an error the caller can explain.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; a panic inside becomes `Err` with the panic's message, and is not printed.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn panic_becomes_error_with_its_message() {
        let err = super::catch_quietly(|| -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(err, "boom 1");
        assert_eq!(super::catch_quietly(|| 5).unwrap(), 5);
    }
}
