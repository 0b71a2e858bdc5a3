//! The operations. Each takes its argument struct from the wire crate and
//! returns that operation's result type or an [`OpError`].

pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod info;
pub(crate) mod system;
pub(crate) mod x11;

use daas_guest_proxy_wire::message::{
    ClipboardGet, ClipboardSet, EnsureUser, GetFile, Info, Ready, Reboot, SetHostname,
    SetKeyboardLayout, SetResolution, Shutdown, Spawn,
};
use daas_guest_proxy_wire::{ErrorCode, Operation};

use crate::error::OpError;
use crate::serve::{reply, Ctx};

/// Runs an operation on its request thread (`ping`, `exec` and `put_file`
/// are driven by the session itself).
pub(crate) fn run(ctx: &Ctx, op: Operation) -> Result<serde_json::Value, OpError> {
    match op {
        Operation::Info(a) => reply::<Info>(info::info(ctx, a)),
        Operation::Spawn(a) => reply::<Spawn>(system::spawn(ctx, a)),
        Operation::GetFile(a) => reply::<GetFile>(files::get_file(ctx, a)),
        Operation::SetHostname(a) => reply::<SetHostname>(system::set_hostname(ctx, a)),
        Operation::EnsureUser(a) => reply::<EnsureUser>(system::ensure_user(ctx, a)),
        Operation::SetKeyboardLayout(a) => {
            reply::<SetKeyboardLayout>(x11::set_keyboard_layout(ctx, a))
        }
        Operation::SetResolution(a) => reply::<SetResolution>(x11::set_resolution(ctx, a)),
        Operation::ClipboardSet(a) => reply::<ClipboardSet>(x11::clipboard_set(ctx, a)),
        Operation::ClipboardGet(a) => reply::<ClipboardGet>(x11::clipboard_get(ctx, a)),
        Operation::Ready(_) => reply::<Ready>(system::ready(ctx)),
        Operation::Shutdown(a) => reply::<Shutdown>(system::power(ctx, false, a.delay_ms)),
        Operation::Reboot(a) => reply::<Reboot>(system::power(ctx, true, a.delay_ms)),
        Operation::Ping(_) | Operation::Exec(_) | Operation::PutFile(_) => Err(OpError::new(
            ErrorCode::Internal,
            format!("{} is not run on a request thread", op.name()),
        )),
    }
}
