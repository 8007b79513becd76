//! How much of a mapped file the page cache holds (`mincore`), for an operator's metrics:
//! exact for a small mapping, estimated from evenly spaced pages for a large one, so that
//! the cost stays bounded whatever the table's size (a 189 GiB table has 49 million pages).

use std::io;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Fills `flags` with one byte per page from `start` (page-aligned, inside a live mapping),
/// whose lowest bit says whether the page is in memory.
fn probe(start: *const u8, flags: &mut [u8]) -> io::Result<()> {
    // SAFETY: `start` is page-aligned and the `flags.len()` pages after it lie in a mapping
    // the caller keeps alive; `flags` has one byte per page, as mincore writes.
    let done = unsafe {
        libc::mincore(
            start as *mut libc::c_void,
            flags.len() * page_size(),
            flags.as_mut_ptr(),
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes of the `len`-byte mapping at `base` (page-aligned) held in memory: counted page by
/// page when it has at most `max_probes` pages, otherwise estimated from `max_probes` pages
/// spread evenly over it (one `mincore` call each).
pub fn resident_bytes(base: *const u8, len: usize, max_probes: usize) -> io::Result<u64> {
    let page = page_size();
    let pages = len.div_ceil(page);
    if pages == 0 {
        return Ok(0);
    }
    if pages <= max_probes.max(1) {
        let mut flags = vec![0u8; pages];
        probe(base, &mut flags)?;
        let resident = flags.iter().filter(|&&f| f & 1 == 1).count();
        return Ok((resident * page).min(len) as u64);
    }
    let probes = max_probes.max(1);
    let mut resident = 0usize;
    for i in 0..probes {
        // The middle page of each of `probes` equal stretches.
        let at = ((2 * i + 1) as u128 * pages as u128 / (2 * probes) as u128) as usize;
        let mut flag = [0u8];
        // SAFETY: `at < pages`, so the page lies inside the mapping.
        probe(unsafe { base.add(at * page) }, &mut flag)?;
        resident += usize::from(flag[0] & 1);
    }
    Ok((resident as u128 * len as u128 / probes as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use memmap2::MmapMut;

    #[test]
    fn counts_the_touched_pages_of_an_anonymous_mapping() {
        let page = page_size();
        let mut map = MmapMut::map_anon(64 * page).unwrap();
        assert_eq!(resident_bytes(map.as_ptr(), map.len(), 1024).unwrap(), 0);
        for p in (0..64).step_by(4) {
            map[p * page] = 1;
        }
        assert_eq!(
            resident_bytes(map.as_ptr(), map.len(), 1024).unwrap(),
            16 * page as u64
        );
        // Estimated from 8 probes, one per stretch of 8 pages, each probing page 4 of its
        // stretch: every probe finds a touched page (4, 12, ...), hence all resident.
        assert_eq!(
            resident_bytes(map.as_ptr(), map.len(), 8).unwrap(),
            64 * page as u64
        );
        // 16 probes at pages 2, 6, 10, ...: none touched.
        assert_eq!(resident_bytes(map.as_ptr(), map.len(), 16).unwrap(), 0);
    }

    #[test]
    fn estimates_a_half_resident_mapping_from_probes() {
        let page = page_size();
        let mut map = MmapMut::map_anon(4096 * page).unwrap();
        for p in 0..2048 {
            map[p * page] = 1;
        }
        let estimate = resident_bytes(map.as_ptr(), map.len(), 256).unwrap();
        assert_eq!(estimate, 2048 * page as u64);
    }
}
