"""Traditional and Simplified Chinese: which characters tell the two scripts apart."""

from __future__ import annotations

# Traditional and Simplified forms of common characters, position by position (checked against
# OpenCC's t2s). Characters the two scripts share (假, 薪, 天) tell nothing and are not listed.
_TRAD = (
    "請說幾們會與員發這個時為對開關門間來還過後給規讓從應該經問題單項報銷費額帳號電腦網絡線碼話記錄資訊產"
    "業務處辦內體學習課訓練機構數據統計當實際現場議論認證確須醫療險藥齡歲離職責權檔書寫讀聽見觀視覺親愛戶"
    "區縣國華語試驗調換變轉輸運車輛飛鐘錢銀價貨買賣購貸稅獎勵績優勢標續紀約級組織結紅綠總監審簽專頭領導師"
    "長張陳劉楊黃趙吳閱隨選舉擇備東動勞兩麼嗎點樣種類廣雙進達遠邊連遲適遞聯聲態懷憑舊興擊撥擔護協衛顧營養"
    "飯館飲訂預檢測億萬參歡氣溫濕熱燈鍵盤錯誤設裝載儲補貼償評鑑晉遷終禮幣紙傷婦嬰歷圖夠樂樓廳層壓幫條麗鄉"
    "燒鳥魚馬龍陸島靜淨滿獨壞瀏覽軟韓夢龜歸齊齒擁擬擴攜稱穩積窮竊築簡糧緊縮罰聞膽臨艦蘭蟲襪諮詢謝謹譯貢貴"
    "賴趕蹤躍軍軌較輕辭農遺郵鄰醬釋針鏡閒陽陰雞難靈頁順頓頻顏風飄駕騎鬧魯鴻鹽麥黨"
)
_SIMP = (
    "请说几们会与员发这个时为对开关门间来还过后给规让从应该经问题单项报销费额帐号电脑网络线码话记录资讯产"
    "业务处办内体学习课训练机构数据统计当实际现场议论认证确须医疗险药龄岁离职责权档书写读听见观视觉亲爱户"
    "区县国华语试验调换变转输运车辆飞钟钱银价货买卖购贷税奖励绩优势标续纪约级组织结红绿总监审签专头领导师"
    "长张陈刘杨黄赵吴阅随选举择备东动劳两么吗点样种类广双进达远边连迟适递联声态怀凭旧兴击拨担护协卫顾营养"
    "饭馆饮订预检测亿万参欢气温湿热灯键盘错误设装载储补贴偿评鉴晋迁终礼币纸伤妇婴历图够乐楼厅层压帮条丽乡"
    "烧鸟鱼马龙陆岛静净满独坏浏览软韩梦龟归齐齿拥拟扩携称稳积穷窃筑简粮紧缩罚闻胆临舰兰虫袜咨询谢谨译贡贵"
    "赖赶踪跃军轨较轻辞农遗邮邻酱释针镜闲阳阴鸡难灵页顺顿频颜风飘驾骑闹鲁鸿盐麦党"
)
TRADITIONAL = frozenset(_TRAD)
SIMPLIFIED = frozenset(_SIMP)
# Overlap compares scripts folded to Traditional, so a Simplified answer matches its passage.
TO_TRADITIONAL = str.maketrans(_SIMP, _TRAD)
