//! Access to the `RST_LAYOUT` global the agent writes before loading.
use rst_trace_common::KernelLayout;

#[unsafe(no_mangle)]
static RST_LAYOUT: KernelLayout = KernelLayout::UNKNOWN;

/// Reads one field of the layout. The volatile read stops the compiler from folding the
/// placeholder value in; the verifier then sees the real, frozen value and prunes dead paths.
macro_rules! lay {
    ($($field:ident).+) => {
        unsafe { core::ptr::read_volatile(&crate::layout::layout().$($field).+) }
    };
}
pub(crate) use lay;

#[inline(always)]
pub fn layout() -> &'static KernelLayout {
    &RST_LAYOUT
}

/// Whether an event in `netns` touching `local`/`remote` ports passes the user's filters.
#[inline(always)]
pub fn wanted(netns: u32, local_port: u16, remote_port: u16) -> bool {
    let want_ns = lay!(filter_netns);
    if want_ns != 0 && want_ns != netns {
        return false;
    }
    let want_port = lay!(filter_port);
    want_port == 0 || want_port == local_port || want_port == remote_port
}
