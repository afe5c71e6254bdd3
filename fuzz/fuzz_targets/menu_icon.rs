//! A template's application icon (`GetApplicationIcon`: whatever bytes the template has) as
//! dom0's menu draws it (`bulkhead_appmenus::icon`): the first byte picks the label, the rest
//! is decoded with limits, scaled and framed in the label's colour. Nothing panics; the result
//! is always an ICON_SIZE square whose frame is the colour, a plain square of it when the
//! bytes are no usable PNG, and it encodes to a PNG that decodes to the same image.
#![no_main]

use bulkhead_appmenus::icon::{
    decode_icon, domain_icon, encode_icon, framed_icon, label_rgb, ICON_FRAME, ICON_SIZE,
};
use bulkhead_domain::Label;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, png)) = data.split_first() else {
        return;
    };
    let label = Label::ALL[usize::from(pick) % Label::ALL.len()];
    let rgb = label_rgb(label.as_str());
    let [r, g, b] = rgb;
    let colour = [r, g, b, 255];
    let decoded = framed_icon(png, rgb).is_ok();
    let img = domain_icon(png, rgb, "fuzz", "x.desktop");
    assert_eq!(img.dimensions(), (ICON_SIZE, ICON_SIZE));
    for (x, y, p) in img.enumerate_pixels() {
        let frame = x < ICON_FRAME
            || y < ICON_FRAME
            || x >= ICON_SIZE - ICON_FRAME
            || y >= ICON_SIZE - ICON_FRAME;
        if frame || !decoded {
            assert_eq!(p.0, colour, "pixel {x},{y} (decoded: {decoded})");
        }
    }
    let bytes = encode_icon(&img).expect("an icon always encodes");
    let back = decode_icon(&bytes).expect("our own icon decodes");
    assert!(back == img, "the written icon is not the drawn one");
});
