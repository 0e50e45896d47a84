//! Index arithmetic for arrays made of doubling pages.
//!
//! Client slots and session members both live in pages whose sizes double:
//! `base, 2·base, 4·base, …`. Pages are allocated on demand and never move, so a
//! reader can hold a reference into one while the array grows, and the index of an
//! element never changes. With `base = 2^shift`, page `p` starts at index
//! `base·(2^p − 1)`.

/// Splits a flat index into `(page, offset)` for pages of `2^shift << p` elements.
#[inline]
pub(crate) fn split(index: usize, shift: u32) -> (usize, usize) {
    let base = 1usize << shift;
    // (index + base) / base lies in [2^p, 2^(p+1)) for the page p holding `index`.
    let page = ((index + base) >> shift).ilog2() as usize;
    (page, index + base - (base << page))
}

/// The number of elements in page `page`.
#[inline]
pub(crate) fn page_len(page: usize, shift: u32) -> usize {
    (1usize << shift) << page
}

/// The number of elements in pages `0..pages`.
#[inline]
pub(crate) fn capacity(pages: usize, shift: u32) -> usize {
    ((1usize << shift) << pages) - (1usize << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_walks_every_page_in_order() {
        for shift in [2, 6] {
            let mut expected = (0, 0);
            for index in 0..capacity(8, shift) {
                assert_eq!(
                    split(index, shift),
                    expected,
                    "index {index}, shift {shift}"
                );
                expected.1 += 1;
                if expected.1 == page_len(expected.0, shift) {
                    expected = (expected.0 + 1, 0);
                }
            }
            assert_eq!(split(capacity(8, shift), shift), (8, 0));
        }
    }

    #[test]
    fn capacity_is_the_sum_of_page_lengths() {
        for shift in [0, 2, 6] {
            let sum: usize = (0..10).map(|p| page_len(p, shift)).sum();
            assert_eq!(capacity(10, shift), sum);
        }
    }
}
