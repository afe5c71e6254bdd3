//! Lines from Qubes' default policy and its documentation, evaluated as Qubes would.

use super::*;

#[test]
fn qubes_default_policy_lines() {
    let p = ok_pol(
        "qubes.Filecopy          *           @anyvm          @anyvm      ask\n\
         qubes.OpenInVM          *           @anyvm          @dispvm     allow\n\
         qubes.OpenInVM          *           @anyvm          @anyvm      ask\n\
         qubes.OpenURL           *           @anyvm          @dispvm     allow\n\
         qubes.OpenURL           *           @anyvm          @anyvm      ask\n\
         qubes.StartApp          *           @anyvm          @dispvm     allow\n\
         qubes.GetDate           *           @tag:anon-vm    @anyvm      deny\n\
         qubes.GetDate           *           @anyvm          @anyvm      allow target=dom0\n\
         qubes.Notifications     *           @anyvm          @default    allow target=dom0\n\
         qubes.UpdatesProxy      *   @type:TemplateVM        @default    allow target=net\n\
         qubes.VMShell           *           @anyvm          @dispvm     allow\n\
         qubes.VMShell           *           @anyvm          @anyvm      deny\n\
         qubes.ConnectTCP        *           @anyvm          @anyvm      deny\n\
         qubes.ClipboardPaste * @adminvm\t@anyvm\task\n\
         qubes.ClipboardPaste * @anyvm\t@anyvm\task\n\
         qubes.WindowIconUpdater *   @anyvm dom0 allow\n\
         qubes.Filecopy * @anyvm @adminvm deny\n\
         qubes.InputMouse * net @adminvm deny\n",
    );
    assert!(ev(&p, "qubes.Filecopy", "", "work", "").is_ask());
    assert_eq!(
        allow_target(&ev(&p, "qubes.OpenInVM", "", "work", "@dispvm")),
        "@dispvm:work-dvm"
    );
    assert!(ev(&p, "qubes.OpenInVM", "", "work", "home").is_ask());
    assert_eq!(
        allow_target(&ev(&p, "qubes.GetDate", "", "work", "")),
        "dom0"
    );
    let mut s = sys();
    s.insert(DomainInfo::new(n("anon"), DomainClass::App).with_tag("anon-vm"));
    let req = Request::new("qubes.GetDate", "", "anon", "");
    assert!(p.evaluate(&req, &s).is_deny());
    assert_eq!(
        allow_target(&ev(&p, "qubes.Notifications", "", "work", "")),
        "dom0"
    );
    assert!(ev(&p, "qubes.Notifications", "", "work", "home").is_deny());
    assert_eq!(
        allow_target(&ev(&p, "qubes.UpdatesProxy", "", "debian", "")),
        "net"
    );
    assert!(ev(&p, "qubes.UpdatesProxy", "", "work", "").is_deny());
    assert!(ev(&p, "qubes.VMShell", "", "work", "home").is_deny());
    assert!(ev(&p, "qubes.VMShell", "", "work", "@dispvm").is_allow());
    assert!(ev(&p, "qubes.ClipboardPaste", "", "dom0", "work").is_ask());
    assert!(ev(&p, "qubes.ClipboardPaste", "", "home", "work").is_ask());
    assert_eq!(
        allow_target(&ev(&p, "qubes.WindowIconUpdater", "", "work", "dom0")),
        "dom0"
    );
    assert!(ev(&p, "qubes.Filecopy", "", "work", "dom0").is_deny());
    assert!(ev(&p, "qubes.ConnectTCP", "+22", "work", "home").is_deny());
}

#[test]
fn qubes_doc_examples() {
    let p = ok_pol(
        "* * anon-whonix @dispvm allow target=@dispvm:anon-whonix-dvm\n\
         * * work @tag:work ask default_target=work-files\n\
         test.File +testfile1 home work allow\n",
    );
    assert_eq!(
        allow_target(&ev(&p, "any.Thing", "", "anon-whonix", "@dispvm")),
        "@dispvm:anon-whonix-dvm"
    );
    let r = ev(&p, "x.Y", "+a", "work", "work-files");
    assert_eq!(ask_targets(&r), vec!["work-dvm", "work-files"]);
    assert_eq!(
        ask(&r).default_target,
        Some(CallTarget::Domain(n("work-files")))
    );
    assert!(ev(&p, "test.File", "+testfile1", "home", "work").is_allow());
    assert!(ev(&p, "test.File", "+testfile2", "home", "work").is_deny());
}
