"""The privacy notice on the captions screen: speech (and pictures, when the camera is on) go to a
cloud translation service. Shown in the visitor's languages (the two the box translates between)
where a text exists below, else in English; ``[control] notice`` replaces it with the owner's own.
"""

from __future__ import annotations

from daemon.config import Config

#: (speech only, speech and camera), per language.
NOTICES: dict[str, tuple[str, str]] = {
    "en": (
        "What you say here is sent to a cloud translation service.",
        "What you say, and pictures from the camera, are sent to a cloud translation service.",
    ),
    "zh": ("您在此处说的话会发送到云端翻译服务。", "您在此处说的话和摄像头画面会发送到云端翻译服务。"),
    "de": (
        "Was Sie hier sagen, wird an einen Cloud-Übersetzungsdienst gesendet.",
        "Was Sie hier sagen, und Bilder der Kamera werden an einen Cloud-Übersetzungsdienst gesendet.",
    ),
    "fr": (
        "Ce que vous dites ici est envoyé à un service de traduction en ligne.",
        "Ce que vous dites ici et les images de la caméra sont envoyés à un service de traduction en ligne.",
    ),
    "es": (
        "Lo que dice aquí se envía a un servicio de traducción en la nube.",
        "Lo que dice aquí y las imágenes de la cámara se envían a un servicio de traducción en la nube.",
    ),
    "it": (
        "Ciò che dice qui viene inviato a un servizio di traduzione cloud.",
        "Ciò che dice qui e le immagini della fotocamera vengono inviati a un servizio di traduzione cloud.",
    ),
    "pt": (
        "O que você diz aqui é enviado a um serviço de tradução na nuvem.",
        "O que você diz aqui e as imagens da câmera são enviados a um serviço de tradução na nuvem.",
    ),
    "nl": (
        "Wat u hier zegt, wordt naar een vertaaldienst in de cloud gestuurd.",
        "Wat u hier zegt en beelden van de camera worden naar een vertaaldienst in de cloud gestuurd.",
    ),
    "ja": (
        "ここで話した内容はクラウドの翻訳サービスに送信されます。",
        "ここで話した内容とカメラの映像はクラウドの翻訳サービスに送信されます。",
    ),
    "ko": (
        "여기에서 말씀하신 내용은 클라우드 번역 서비스로 전송됩니다.",
        "여기에서 말씀하신 내용과 카메라 영상은 클라우드 번역 서비스로 전송됩니다.",
    ),
    "ru": (
        "Сказанное здесь отправляется в облачный сервис перевода.",
        "Сказанное здесь и изображение с камеры отправляются в облачный сервис перевода.",
    ),
}


def notice(cfg: Config, camera_on: bool) -> list[dict[str, str]]:
    """The notice lines, each with its language; [] when the box translates on itself alone."""
    if cfg.control.notice is not None:
        return [{"language": "", "text": cfg.control.notice}] if cfg.control.notice else []
    lines = []
    for code in dict.fromkeys((cfg.languages.source, cfg.languages.target, "en")):
        if code in NOTICES:
            lines.append({"language": code, "text": NOTICES[code][1 if camera_on else 0]})
        if len(lines) == 2:
            break
    return lines
