// What both pages need to know about languages to show them: names in their own script,
// which are written right to left, and the BCP 47 tag that picks the right CJK glyphs.
"use strict";

const TOLK_LANGUAGES = {
  nativeNames: {
    en: "English", zh: "中文", ru: "Русский", fr: "Français", de: "Deutsch", pt: "Português",
    es: "Español", it: "Italiano", id: "Bahasa Indonesia", ko: "한국어", ja: "日本語",
    vi: "Tiếng Việt", th: "ไทย", ar: "العربية", yue: "粵語", hi: "हिन्दी", el: "Ελληνικά", tr: "Türkçe",
  },
  rightToLeft: new Set(["ar"]),
  // zh is Simplified Chinese, yue is Cantonese as written in Hong Kong: the same code points
  // are drawn differently by the CJK fonts depending on this tag.
  htmlTags: { zh: "zh-Hans", yue: "zh-Hant-HK", ja: "ja", ko: "ko" },

  dir(code) {
    return this.rightToLeft.has(code) ? "rtl" : "ltr";
  },
  tag(code) {
    return this.htmlTags[code] || code || "und";
  },
  name(code) {
    return this.nativeNames[code] || code || "";
  },
};
