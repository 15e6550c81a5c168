<?xml version="1.0" encoding="UTF-8"?>
<!--
  The introspect pages of the emulated vRouter agent, rendered as HTML.

  Our own XSLT 1.0 stylesheet (browsers only do 1.0), written for this project; it follows the contract of
  Sandesh's universal_parse.xsl so that the agent's XML pages (which name it in their
  <?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>) look as operators expect:

  * the root's @type says what the document is:
      rlist    a module page (agent.xml, ...): one form per request, one text input per field, in declared order;
      slist    several responses wrapped in <__FirstResp_list>: each one rendered under its name;
      sandesh  one response;
  * a field is <name type="T" identifier="N" [link="Req"]>value</name>; a struct field holds one <Struct> element,
    a list field one <list type="T" size="K"> of <Struct> items or of <element> values;
  * a field with @link is a link to Snh_<link>?x=<value>;
  * the `more` field is Sandesh's own framing and is not shown.

  The server applies this same stylesheet (vrouter/introspect/render.py, lxml) when a client asks for HTML,
  so a browser without XSLT sees exactly what one with XSLT does.
-->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">

  <xsl:output method="html" encoding="UTF-8" indent="no" doctype-system="about:legacy-compat"/>

  <xsl:param name="module" select="'contrail-vrouter-agent'"/>

  <!-- The columns of a table of structs: the first item's fields, then any field only later items have
       (each once).  Keyed by container and name: the first item's fields, and every item's. -->
  <xsl:key name="first-field" match="*[@size]/*[1]/*" use="concat(generate-id(../..), '/', name())"/>
  <xsl:key name="field" match="*[@size]/*/*" use="concat(generate-id(../..), '/', name())"/>

  <!-- For the URL encoding below. -->
  <xsl:variable name="url-safe" select="'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~:,/@'"/>
  <xsl:variable name="ascii"><xsl:text> !"#$%&amp;'()*+,-./0123456789:;&lt;=&gt;?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\]^_`abcdefghijklmnopqrstuvwxyz{|}~</xsl:text></xsl:variable>
  <xsl:variable name="hex" select="'0123456789ABCDEF'"/>

  <xsl:variable name="kind" select="string(/*/@type)"/>

  <xsl:template match="/">
    <html lang="en">
      <head>
        <title>
          <xsl:choose>
            <xsl:when test="$kind = 'rlist'"><xsl:value-of select="concat(name(/*), ' Introspect')"/></xsl:when>
            <xsl:when test="$kind = 'slist' and /*/*"><xsl:value-of select="name(/*/*[1])"/></xsl:when>
            <xsl:otherwise><xsl:value-of select="name(/*)"/></xsl:otherwise>
          </xsl:choose>
          <xsl:value-of select="concat(' - ', $module)"/>
        </title>
        <link rel="stylesheet" type="text/css" href="/css/style.css"/>
      </head>
      <body>
        <div class="topbar">
          <a class="brand" href="/"><xsl:value-of select="$module"/></a>
          <span class="what">introspect</span>
        </div>
        <main>
          <xsl:choose>
            <xsl:when test="$kind = 'rlist'"><xsl:apply-templates select="/*" mode="module"/></xsl:when>
            <xsl:when test="$kind = 'slist'">
              <xsl:for-each select="/*/*"><xsl:call-template name="response"/></xsl:for-each>
            </xsl:when>
            <xsl:otherwise><xsl:for-each select="/*"><xsl:call-template name="response"/></xsl:for-each></xsl:otherwise>
          </xsl:choose>
        </main>
      </body>
    </html>
  </xsl:template>

  <!-- A module page: the side list of its requests, then one form per request.  Submitting a form sends
       every field in declared order (?name=&type=...), which both of Sandesh's argument parsers read right. -->
  <xsl:template match="*" mode="module">
    <h3><xsl:value-of select="concat(name(), ' Introspect')"/></h3>
    <div class="module">
      <nav class="side">
        <ul>
          <xsl:for-each select="*">
            <li><a href="#Snh_{name()}"><xsl:value-of select="name()"/></a></li>
          </xsl:for-each>
        </ul>
      </nav>
      <div class="requests">
        <xsl:for-each select="*">
          <xsl:variable name="req" select="name()"/>
          <section class="request" id="Snh_{$req}">
            <h4><xsl:value-of select="$req"/></h4>
            <form action="Snh_{$req}" method="get">
              <xsl:for-each select="*">
                <div class="field">
                  <label for="Snh_{$req}.{name()}"><xsl:value-of select="concat(name(), ' (', @type, ')')"/></label>
                  <input type="text" id="Snh_{$req}.{name()}" name="{name()}"/>
                </div>
              </xsl:for-each>
              <button type="submit">Send</button>
            </form>
          </section>
        </xsl:for-each>
      </div>
    </div>
  </xsl:template>

  <!-- One response (the context node): its name, then its fields. -->
  <xsl:template name="response">
    <xsl:variable name="fields" select="*[not(self::more)]"/>
    <xsl:variable name="lists" select="$fields[@type = 'list' or @type = 'set']"/>
    <xsl:variable name="main" select="$lists/*[1]"/>
    <section class="response">
      <h4><xsl:value-of select="name()"/></h4>
      <xsl:choose>
        <xsl:when test="self::Pagination and req/PageReqData">
          <xsl:apply-templates select="req/PageReqData" mode="pager"/>
        </xsl:when>
        <!-- A table response (ItfResp, KFlowResp, VrfListResp, ...): its one list of structs is THE table, one row
             per item; a response of one list of values (SandeshTraceTextResponse) is one row per value. -->
        <xsl:when test="count($lists) = 1 and $main and ($main/@type = 'struct' or $main/*[1]/* or count($fields) = 1)">
          <xsl:call-template name="fields">
            <xsl:with-param name="nodes" select="$lists/preceding-sibling::*[not(self::more)]"/>
          </xsl:call-template>
          <xsl:apply-templates select="$main" mode="container">
            <xsl:with-param name="class" select="'main'"/>
          </xsl:apply-templates>
          <xsl:call-template name="fields">
            <xsl:with-param name="nodes" select="$lists/following-sibling::*[not(self::more)]"/>
          </xsl:call-template>
        </xsl:when>
        <xsl:when test="$fields">
          <xsl:call-template name="fields"><xsl:with-param name="nodes" select="$fields"/></xsl:call-template>
        </xsl:when>
        <xsl:when test="normalize-space(.) != ''">
          <table class="fields"><tbody><tr><td><xsl:value-of select="."/></td></tr></tbody></table>
        </xsl:when>
      </xsl:choose>
    </section>
  </xsl:template>

  <!-- Pagination: its page keys as links (prev, next, first, all; greyed when there is no such page), the counts as text. -->
  <xsl:template match="*" mode="pager">
    <div class="pager">
      <xsl:for-each select="*">
        <xsl:choose>
          <xsl:when test="@link and string(.) = ''">
            <span class="off"><xsl:value-of select="substring-before(concat(name(), '_page'), '_page')"/></span>
          </xsl:when>
          <xsl:when test="@link">
            <xsl:call-template name="leaf">
              <xsl:with-param name="label" select="substring-before(concat(name(), '_page'), '_page')"/>
            </xsl:call-template>
          </xsl:when>
          <xsl:otherwise>
            <span class="count"><xsl:value-of select="concat(name(), ' ')"/><code><xsl:value-of select="."/></code></span>
          </xsl:otherwise>
        </xsl:choose>
        <xsl:text> </xsl:text>
      </xsl:for-each>
    </div>
  </xsl:template>

  <!-- Fields as a two-column table: name | value. -->
  <xsl:template name="fields">
    <xsl:param name="nodes"/>
    <xsl:if test="$nodes">
      <table class="fields">
        <tbody>
          <xsl:for-each select="$nodes">
            <tr>
              <td class="key"><xsl:value-of select="name()"/></td>
              <td><xsl:apply-templates select="." mode="value"/></td>
            </tr>
          </xsl:for-each>
        </tbody>
      </table>
    </xsl:if>
  </xsl:template>

  <!-- The value of a field, inside its cell. -->
  <xsl:template match="*" mode="value">
    <xsl:choose>
      <xsl:when test="@type = 'list' or @type = 'set' or @type = 'map'">
        <xsl:apply-templates select="*[1]" mode="container"/>
        <xsl:if test="not(*)"><span class="empty">-</span></xsl:if>
      </xsl:when>
      <xsl:when test="@type = 'struct' and count(*) = 1">
        <xsl:call-template name="item"><xsl:with-param name="node" select="*"/></xsl:call-template>
      </xsl:when>
      <xsl:when test="*">
        <xsl:call-template name="fields"><xsl:with-param name="nodes" select="*"/></xsl:call-template>
      </xsl:when>
      <xsl:otherwise><xsl:call-template name="leaf"/></xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <!-- A container (<list>, <set>, <map>): a table of structs, a column of values, or key | value rows. -->
  <xsl:template match="*" mode="container">
    <xsl:param name="class" select="'nested'"/>
    <xsl:choose>
      <xsl:when test="not(*) and $class = 'main'">
        <table class="list {$class}"><tbody><tr><td><span class="empty">-</span></td></tr></tbody></table>
      </xsl:when>
      <xsl:when test="not(*)"><span class="empty">-</span></xsl:when>
      <xsl:when test="@key and @value">
        <table class="fields {$class}">
          <tbody>
            <xsl:for-each select="*[position() mod 2 = 1]">
              <tr>
                <td class="key"><xsl:call-template name="item"><xsl:with-param name="node" select="."/></xsl:call-template></td>
                <td><xsl:call-template name="item"><xsl:with-param name="node" select="following-sibling::*[1]"/></xsl:call-template></td>
              </tr>
            </xsl:for-each>
          </tbody>
        </table>
      </xsl:when>
      <xsl:when test="@type = 'struct' or *[1]/*">
        <xsl:variable name="more-fields" select="*[position() > 1]/*[not(key('first-field', concat(generate-id(../..), '/', name())))]"/>
        <xsl:variable name="cols" select="*[1]/* | $more-fields[generate-id() = generate-id(key('field', concat(generate-id(../..), '/', name()))[1])]"/>
        <xsl:variable name="header"><xsl:for-each select="$cols"><xsl:value-of select="concat(name(), '/')"/></xsl:for-each></xsl:variable>
        <table class="list {$class}">
          <thead>
            <tr><xsl:for-each select="$cols"><th><xsl:value-of select="name()"/></th></xsl:for-each></tr>
          </thead>
          <tbody>
            <xsl:for-each select="*">
              <xsl:variable name="row" select="."/>
              <xsl:variable name="fields"><xsl:for-each select="*"><xsl:value-of select="concat(name(), '/')"/></xsl:for-each></xsl:variable>
              <tr>
                <xsl:choose>
                  <!-- the usual row: the header's fields, in its order -->
                  <xsl:when test="string($fields) = string($header)">
                    <xsl:for-each select="*"><td><xsl:apply-templates select="." mode="value"/></td></xsl:for-each>
                  </xsl:when>
                  <xsl:otherwise>
                    <xsl:for-each select="$cols">
                      <xsl:variable name="col" select="name()"/>
                      <td>
                        <xsl:choose>
                          <xsl:when test="$row/*[name() = $col]"><xsl:apply-templates select="$row/*[name() = $col][1]" mode="value"/></xsl:when>
                          <xsl:otherwise><span class="empty">-</span></xsl:otherwise>
                        </xsl:choose>
                      </td>
                    </xsl:for-each>
                  </xsl:otherwise>
                </xsl:choose>
              </tr>
            </xsl:for-each>
          </tbody>
        </table>
      </xsl:when>
      <xsl:otherwise>
        <!-- values (<element>): one row each; a trace line's cell is td.trace -->
        <xsl:variable name="cell">
          <xsl:if test="ancestor::SandeshTraceTextResponse">trace</xsl:if>
        </xsl:variable>
        <table class="elements {$class}">
          <tbody>
            <xsl:for-each select="*">
              <tr>
                <td>
                  <xsl:if test="string($cell) != ''"><xsl:attribute name="class"><xsl:value-of select="$cell"/></xsl:attribute></xsl:if>
                  <xsl:call-template name="item"><xsl:with-param name="node" select="."/></xsl:call-template>
                </td>
              </tr>
            </xsl:for-each>
          </tbody>
        </table>
      </xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <!-- An item of a container, or the struct of a struct field: a struct is a table of its fields; a value is
       shown as a leaf, a link when its field (the container's parent) has a link. -->
  <xsl:template name="item">
    <xsl:param name="node"/>
    <xsl:for-each select="$node">
      <xsl:choose>
        <xsl:when test="*">
          <xsl:call-template name="fields"><xsl:with-param name="nodes" select="*[not(self::more)]"/></xsl:call-template>
        </xsl:when>
        <xsl:otherwise>
          <xsl:call-template name="leaf"><xsl:with-param name="link" select="string(../../@link)"/></xsl:call-template>
        </xsl:otherwise>
      </xsl:choose>
    </xsl:for-each>
  </xsl:template>

  <!-- A value (the context node's text): "-" when empty; with a link, <a href="Snh_LINK?x=VALUE">.
       Departure from Sandesh's stylesheet, which puts the raw value in the href (so &, #, + and spaces break
       the link): the value is URL-encoded here. -->
  <xsl:template name="leaf">
    <xsl:param name="link" select="string(@link)"/>
    <xsl:param name="label" select="''"/>
    <xsl:variable name="value" select="string(.)"/>
    <xsl:choose>
      <xsl:when test="$value = ''"><span class="empty">-</span></xsl:when>
      <xsl:when test="$link != ''">
        <xsl:variable name="encoded">
          <xsl:call-template name="urlencode"><xsl:with-param name="s" select="$value"/></xsl:call-template>
        </xsl:variable>
        <a href="Snh_{$link}?x={$encoded}">
          <xsl:if test="$label != ''"><xsl:attribute name="title"><xsl:value-of select="$value"/></xsl:attribute></xsl:if>
          <xsl:choose>
            <xsl:when test="$label != ''"><xsl:value-of select="$label"/></xsl:when>
            <xsl:when test="@link_title"><xsl:value-of select="@link_title"/></xsl:when>
            <xsl:otherwise><xsl:value-of select="$value"/></xsl:otherwise>
          </xsl:choose>
        </a>
      </xsl:when>
      <xsl:otherwise><xsl:value-of select="$value"/></xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <!-- Percent-encoding of a query value, as Python's urllib.parse.quote(s, safe="/:,@") does for ASCII:
       everything but letters, digits, -_.~ and /:,@ becomes %XX (a space is %20, never +, which the agent
       would not decode).  Characters beyond ASCII are left to the HTML serialiser and the browser, which
       encode them as UTF-8.  Halving the string keeps the recursion shallow (log2 of its length). -->
  <xsl:template name="urlencode">
    <xsl:param name="s"/>
    <xsl:choose>
      <xsl:when test="translate($s, $url-safe, '') = ''"><xsl:value-of select="$s"/></xsl:when>
      <xsl:when test="string-length($s) = 1">
        <xsl:choose>
          <xsl:when test="contains($ascii, $s)">
            <xsl:variable name="code" select="string-length(substring-before($ascii, $s)) + 32"/>
            <xsl:value-of select="concat('%', substring($hex, floor($code div 16) + 1, 1), substring($hex, $code mod 16 + 1, 1))"/>
          </xsl:when>
          <xsl:when test="$s = '&#9;'">%09</xsl:when>
          <xsl:when test="$s = '&#10;'">%0A</xsl:when>
          <xsl:when test="$s = '&#13;'">%0D</xsl:when>
          <xsl:otherwise><xsl:value-of select="$s"/></xsl:otherwise>
        </xsl:choose>
      </xsl:when>
      <xsl:otherwise>
        <xsl:variable name="half" select="floor(string-length($s) div 2)"/>
        <xsl:call-template name="urlencode"><xsl:with-param name="s" select="substring($s, 1, $half)"/></xsl:call-template>
        <xsl:call-template name="urlencode"><xsl:with-param name="s" select="substring($s, $half + 1)"/></xsl:call-template>
      </xsl:otherwise>
    </xsl:choose>
  </xsl:template>

</xsl:stylesheet>
