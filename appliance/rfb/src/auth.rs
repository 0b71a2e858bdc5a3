//! VNC Authentication (security type 2) and the `vncpasswd` file format.
//!
//! RFB uses DES with the bits of every key byte in reverse order (the
//! original d3des code numbered bits from the least significant one), so a
//! standard DES implementation needs each key byte bit-reversed first.

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use des::Des;

/// The fixed key TigerVNC, RealVNC and TightVNC use to obfuscate the
/// password stored in a `vncpasswd` file (as the d3des code sees it).
const PASSWORD_FILE_KEY: [u8; 8] = [23, 82, 107, 6, 35, 78, 88, 7];

/// The password as an 8-byte DES key: truncated to 8 bytes or padded with
/// zeros (RFB's rule), before bit reversal.
fn password_block(password: &str) -> [u8; 8] {
    let mut block = [0u8; 8];
    for (dst, src) in block.iter_mut().zip(password.as_bytes()) {
        *dst = *src;
    }
    block
}

fn cipher(key: [u8; 8]) -> Des {
    let reversed = key.map(u8::reverse_bits);
    Des::new(GenericArray::from_slice(&reversed))
}

/// Answers a VNC Authentication challenge: each 8-byte half encrypted
/// (ECB) with the password as the key.
pub(crate) fn vnc_auth_response(password: &str, challenge: &[u8; 16]) -> [u8; 16] {
    let des = cipher(password_block(password));
    let mut out = *challenge;
    for half in out.chunks_exact_mut(8) {
        des.encrypt_block(GenericArray::from_mut_slice(half));
    }
    out
}

/// The 8 bytes `vncpasswd` writes to a password file for `password`
/// (TigerVNC and RealVNC format): the password, truncated to 8 bytes or
/// padded with zeros, DES-encrypted with a fixed, publicly known key.
///
/// This is obfuscation, not protection: keep the file readable only by the
/// server's user. `Xvnc -SecurityTypes VncAuth -PasswordFile FILE` reads it.
pub fn vnc_password_file(password: &str) -> [u8; 8] {
    let des = cipher(PASSWORD_FILE_KEY);
    let mut block = password_block(password);
    des.encrypt_block(GenericArray::from_mut_slice(&mut block));
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn challenge_response_matches_known_vector() {
        // Independent vector: `openssl enc -des-ecb -nopad -K 0e86ceceeef64e26`
        // (the bit-reversed bytes of "password") over bytes 0..16.
        let challenge: [u8; 16] = core::array::from_fn(|i| u8::try_from(i).unwrap());
        let table = [
            ("password", "b866924125c8eebb9debc1db61c538e2"),
            // Only the first 8 bytes of a password count.
            ("passwordIGNORED", "b866924125c8eebb9debc1db61c538e2"),
        ];
        for (password, expect) in table {
            assert_eq!(
                hex(&vnc_auth_response(password, &challenge)),
                expect,
                "{password}"
            );
        }
    }

    #[test]
    fn password_file_matches_vncpasswd() {
        // Output of `printf %s PASSWORD | vncpasswd -f | xxd -p` (TigerVNC).
        let table = [
            ("password", "dbd83cfd727a1458"),
            ("pw", "45d011ed9ab348f4"),
            ("longerpassword", "3304170a9da9af69"),
        ];
        for (password, expect) in table {
            assert_eq!(hex(&vnc_password_file(password)), expect, "{password}");
        }
    }
}
