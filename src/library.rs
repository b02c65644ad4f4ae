//! This shared library itself: kept mapped for as long as the process runs.

/// Keeps this shared library mapped until the process ends: PHP unloads extensions after
/// module shutdown, and a thread of ours that outlived the call that started it (a heartbeat
/// past its stop request, a connect given up on) must not find its code gone.
pub(crate) fn pin() {
    static PINNED: std::sync::Once = std::sync::Once::new();
    PINNED.call_once(|| {
        // SAFETY: dladdr/dlopen with a pointer into this library and the path it reports.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            if libc::dladdr(pin as *const libc::c_void, &mut info) != 0 && !info.dli_fname.is_null()
            {
                libc::dlopen(
                    info.dli_fname,
                    libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
                );
            }
        }
    });
}
